"""Clients of the SM1 server: the DAW bridge and the command-line tools."""
