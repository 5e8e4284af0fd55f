"""The IPython magics (commands.py) and what only they need: argument parsing into a spec (args.py), usage
errors, and which model a cell means. Thin: they call the client and hand its answer to the display."""
