"""What runs unconfined for a cluster job: the job driver (driver.py, trusted code that never sees the
payload, started like a worker by runner/launch.py) and the code it sends to the cluster's machines
(partitions.py). The confined worker (worker/) never imports this folder."""
