"""Unit tests of the load tester (pure parts: no sockets, no sleeps, no wall clock)."""
