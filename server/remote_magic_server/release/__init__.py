"""The release desk and its memory: the one place in the trusted parent that decides what leaves."""
