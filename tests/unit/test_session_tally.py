"""SessionRegistry.tally(): the SPEC §8 session counters in one pass."""

from presence_ha.server.metrics import Metrics
from presence_ha.server.sessions import Session, SessionKind, SessionRegistry
from presence_ha.server.xmpp.jid import JID


def _session(jid: str, kind: SessionKind) -> Session:
    return Session(JID.parse(jid), send=lambda _stanza: None, kind=kind)


def _registry() -> SessionRegistry:
    registry = SessionRegistry()
    for jid, kind in [
        ("alice@x/phone", SessionKind.ACTIVE), ("alice@x/laptop", SessionKind.ACTIVE),
        ("bob@x/a", SessionKind.ACTIVE), ("bob@x/b", SessionKind.INACTIVE),  # active user with a backup
        ("carol@x/a", SessionKind.INACTIVE),  # inactive only
        ("dave@x/a", SessionKind.INACTIVE), ("dave@x/b", SessionKind.INACTIVE),
    ]:
        registry.add(_session(jid, kind))
    return registry


def test_tally_counts_sessions_and_accounts():
    tally = _registry().tally()
    assert tally.active_sessions == 3
    assert tally.inactive_sessions == 4
    assert tally.active_users == 2  # alice, bob
    assert tally.inactive_only_users == 2  # carol, dave


def test_tally_follows_kind_changes_and_removal():
    registry = _registry()
    carol = registry.get(JID.parse("carol@x/a"))
    carol.kind = SessionKind.ACTIVE  # activated by a takeover
    registry.remove(registry.get(JID.parse("alice@x/phone")))
    tally = registry.tally()
    assert (tally.active_sessions, tally.inactive_sessions) == (3, 3)
    assert (tally.active_users, tally.inactive_only_users) == (3, 1)
    assert registry.count(SessionKind.ACTIVE) == tally.active_sessions


def test_gauges_render_the_tally():
    metrics = Metrics("n1")
    metrics.watch_sessions(_registry(), lambda: 5)
    text = metrics.render().decode()
    for line in ("jsm_sessions_client 3.0", "jsm_sessions_client_inactive 4.0", "active_jsm_sessions 2.0",
                 "inactive_jsm_sessions 2.0", "jsm_sessions_composed 5.0"):
        assert line in text.splitlines(), line


def test_a_scrape_right_after_a_login_counts_it():
    """No count is reused across scrapes: a session added between two renders shows."""
    metrics = Metrics("n1")
    registry = _registry()
    metrics.watch_sessions(registry, lambda: 0)
    assert "jsm_sessions_client 3.0" in metrics.render().decode().splitlines()
    registry.add(Session(JID.parse("dave@x/desk"), send=lambda _s: None))
    assert "jsm_sessions_client 4.0" in metrics.render().decode().splitlines()


def test_session_counters_by_their_spec_names():
    metrics = Metrics("n1")
    metrics.watch_sessions(_registry(), lambda: 5)
    assert metrics.session_counters() == {
        "JsmSessionsClient": 3, "JsmSessionsClientInactive": 4, "ActiveJsmSessions": 2, "InactiveJsmSessions": 2,
        "JsmSessionsComposed": 5,
    }
