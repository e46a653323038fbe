"""Redirect instead of relay, and a node without its database (two groups of one node).

Transcripts: "with `see_other_host_redirect` on, bob dials n1, gets `see-other-host`
naming n2's client address, follows it (test code: slixmpp cannot), and chats with
alice on n1 as usual"; "n2 loses its database (PostgreSQL refuses it): its clients
are disconnected and new logins there are refused, while n1's users carry on".
"""

from __future__ import annotations

import asyncio
import ssl

import pytest

from .cluster import DOMAIN, wait_until
from .test_cluster_im import Slix, make_cluster, module_db_url, start_nodes  # noqa: F401 - a fixture

slixmpp = pytest.importorskip("slixmpp")

DEADLINE_S = 20.0
GROUPS = {"g1": ("n1",), "g2": ("n2",)}
PLACEMENT = {"alice": "n1", "bob": "n2"}


class Redirected(slixmpp.ClientXMPP):
    """slixmpp handles `see-other-host` by reconnecting to its `custom_address` (the
    node first dialled); this points that address at the RFC 6120 §4.9.3.19 other
    host, once, and records it."""

    def __init__(self, jid: str, pw: str) -> None:
        super().__init__(jid, pw)
        self.ssl_context.check_hostname = False
        self.ssl_context.verify_mode = ssl.CERT_NONE
        self.other_host: str | None = None
        self.seen: list[tuple] = []
        self.ready = asyncio.Event()
        self.add_event_handler("stream_error", self._on_stream_error)
        self.add_event_handler("session_start", self._start)
        self.add_event_handler("message", lambda m: self.seen.append((m["from"].full, m["body"])))

    def _on_stream_error(self, error) -> None:
        if error["condition"] == "see-other-host" and self.other_host is None:
            self.other_host = error["see_other_host"]
            host, _, port = self.other_host.rpartition(":")
            self.custom_address = (host, int(port))

    def _start(self, _event) -> None:
        self.send_presence()
        self.ready.set()


@pytest.fixture(scope="module")
def pair(module_db_url, tmp_path_factory):  # noqa: F811 -- the imported fixture, by name
    cluster = make_cluster(module_db_url, tmp_path_factory.mktemp("redirect"), PLACEMENT, GROUPS,
                           params={"see_other_host_redirect": "true"})
    try:
        start_nodes(cluster)
        yield cluster
    finally:
        cluster.stop()


async def test_see_other_host_redirect_when_the_parameter_is_on(pair):
    n1, n2 = pair.node("n1"), pair.node("n2")
    alice = await Slix(pair, "alice", "a").online(n1)
    bob = Redirected(f"bob@{DOMAIN}/b", "bob-pw")
    bob.connect(n1.host, n1.client_port)  # the wrong node
    await asyncio.wait_for(bob.ready.wait(), DEADLINE_S)
    assert bob.other_host == f"{n2.host}:{n2.client_port}"
    assert n2.metrics()["jsm_sessions_client"] == 1.0 and n1.metrics()["jsm_sessions_client"] == 1.0
    bob.send_message(mto=f"alice@{DOMAIN}/a", mbody="redirected hello", mtype="chat")
    await alice.sees("message", f"bob@{DOMAIN}/b", "redirected hello")
    alice.send_message(mto=f"bob@{DOMAIN}/b", mbody="hello bob", mtype="chat")
    await wait_until(lambda: (f"alice@{DOMAIN}/a", "hello bob") in bob.seen, DEADLINE_S, f"bob got {bob.seen}")
    bob.disconnect()
    await alice.offline()
