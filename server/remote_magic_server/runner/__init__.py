"""What every child of the forkserver runs, on either side of the confinement: the start of the process
(launch.py: set-up, `serve`), the protocol's child end (channel.py) and the admitted row sets written for
the parent (evidence.py). The confined worker (worker/) and a cluster job's driver (cluster/) both build
on it; it imports neither (launch.py names each only inside the entry point that starts it)."""
