"""A lab of separate hosts on this machine (issue #17): see `lab.py` for the whole, `netns.py`
for the hosts and network faults, `postgres.py` for the replicated database, `cli.py` for
`presence-ha lab`."""
