"""The pure parts of the standard (XEP-0198) clients of `loadtest failover --clients standard`:
SCRAM from a cached SaltedPassword (checked against scramp's server), the reconnection
backoff, the resumption figures, the client's unacknowledged queue, the option rules."""

import random

import pytest
import scramp
from click.testing import CliRunner

from presence_ha.loadtest.cli import main
from presence_ha.loadtest.resumption import RELOGIN, RESUMED, Reconnect, backoff, figures, from_row, row
from presence_ha.loadtest.scenario import NodeAddr
from presence_ha.loadtest.scram import SaltedPasswords, ScramError, ScramExchange
from presence_ha.loadtest.standard import SmState, StandardPlan


def _server(mechanism: str, password: str):
    mech = scramp.ScramMechanism(mechanism)
    info = mech.make_auth_info(password, iteration_count=4096)
    return mech.make_server(lambda _user: info)


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-1", "SCRAM-SHA-256"])
def test_scram_exchange_is_accepted_by_scramps_server_and_checks_its_signature(mechanism):
    salted = SaltedPasswords()
    for _ in range(2):  # the second login reuses the cached SaltedPassword
        server = _server(mechanism, "pw,=x")
        exchange = ScramExchange(mechanism, "al=ice,", "pw,=x", "clientnonce", salted)
        server.set_client_first(exchange.first())
        final = exchange.final(server.get_server_first())
        server.set_client_final(final)  # raises if the proof is wrong
        exchange.check(server.get_server_final())
    assert len(salted.cache) == 2  # one per server salt (each test server draws a new one)


def test_scram_wrong_password_is_refused_by_the_server():
    server = _server("SCRAM-SHA-256", "right")
    exchange = ScramExchange("SCRAM-SHA-256", "alice", "wrong", "n0nce", SaltedPasswords())
    server.set_client_first(exchange.first())
    final = exchange.final(server.get_server_first())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(final)


def test_scram_refuses_a_forged_server_signature_and_a_foreign_nonce():
    server = _server("SCRAM-SHA-1", "pw")
    exchange = ScramExchange("SCRAM-SHA-1", "alice", "pw", "n0nce", SaltedPasswords())
    server.set_client_first(exchange.first())
    exchange.final(server.get_server_first())
    with pytest.raises(ScramError):
        exchange.check("v=" + "A" * 28)
    other = ScramExchange("SCRAM-SHA-1", "alice", "pw", "mine", SaltedPasswords())
    other.first()
    with pytest.raises(ScramError):
        other.final("r=theirs123,s=c2FsdA==,i=4096")


def test_the_first_reconnection_is_at_once_then_backoff_grows_to_its_cap():
    rng = random.Random(1)
    first = [backoff(rng, 0, 0.5, 1.0, 30.0) for _ in range(200)]
    assert all(0 <= d <= 0.5 for d in first)
    assert all(0.5 <= backoff(rng, 1, 0.5, 1.0, 30.0) <= 1.0 for _ in range(50))
    assert all(0.5 <= backoff(rng, 3, 0.5, 1.0, 30.0) <= 4.0 for _ in range(50))
    assert max(backoff(rng, 20, 0.5, 1.0, 30.0) for _ in range(200)) <= 30.0


def test_resumption_figures_keep_resumed_relogged_and_lost_apart():
    rows = [Reconnect("a", 10.0, 10.5, RESUMED), Reconnect("b", 10.0, 12.0, RESUMED, 2),
            Reconnect("c", 10.0, 11.0, RELOGIN), Reconnect("c", 13.0, 14.5, RELOGIN),
            Reconnect("d", 10.0, None, None, 60), Reconnect("e", 5.0, 5.2, RESUMED)]
    out = figures(from_row(row(r)) for r in rows)
    assert (out["connections_lost"], out["resumed"], out["relogins"]) == (6, 3, 2)
    assert (out["users_relogged"], out["not_reconnected"], out["attempts_max"]) == (1, 1, 2.0)
    assert out["resumption_ms"]["max"] == 2000.0 and out["resumption_ms"]["p50"] == 500.0
    assert out["relogin_ms"]["p50"] == 1000.0 and out["reconnect_ms"]["count"] == 5
    assert figures(rows, fault_at=9.0)["lost_before_fault"] == 1


def test_no_lost_connection_gives_empty_figures():
    out = figures([])
    assert out["connections_lost"] == 0 and out["resumption_ms"]["p99"] is None


def test_an_ack_drops_what_it_covers_and_names_the_messages():
    sm = SmState()
    sm.unacked.extend([(1, "<presence/>", None), (2, "<message/>", "u:1"), (3, "<message/>", "u:2")])
    assert sm.acked(2) == ["u:1"]
    assert [e[0] for e in sm.unacked] == [3]
    assert sm.acked(2) == [] and sm.acked(5) == ["u:2"] and not sm.unacked


def test_the_serving_node_is_the_ha_peer_of_the_backup_the_server_names():
    plan = StandardPlan(mode="standard", domain="d", nodes=(NodeAddr("n1", "h", 1), NodeAddr("n2", "h", 2)),
                        peers=(("n1", "n2"), ("n2", "n1")))
    assert (plan.peer("n2"), plan.peer("n1"), plan.peer("n9"), plan.peer(None)) == ("n1", "n2", None, None)


def test_failover_help_says_what_each_kind_of_client_is():
    out = CliRunner().invoke(main, ["failover", "--help"], terminal_width=200).output
    assert "--clients [dual|standard]" in out and "service address" in out and "XEP-0198" in out


def test_standard_clients_refuse_an_explicit_mode():
    result = CliRunner().invoke(main, ["failover", "--clients", "standard", "--mode", "dual", "--users", "2"])
    assert result.exit_code == 2 and "--mode is for --clients dual" in result.output
