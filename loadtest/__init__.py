"""XMPP load tests: drive any server over TCP to compare presence-ha with Prosody."""
