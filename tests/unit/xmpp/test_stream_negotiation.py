"""The stream core as transcripts: header, STARTTLS, SASL, binding (RFC 6120 §4-§7)."""

from __future__ import annotations

import pytest

from presence_ha.server.xmpp import events as ev
from presence_ha.server.xmpp import sasl
from presence_ha.server.xmpp.errors import Condition, StanzaError, StreamCondition, StreamError
from presence_ha.server.xmpp.jid import JID
from presence_ha.server.xmpp.negotiation import SaslFailure
from presence_ha.server.xmpp.sasl import SaslCondition
from presence_ha.server.xmpp.stream import Phase, Timer
from tests.unit.xmpp.transcript import DOMAIN, HEADER, SASL, Transcript, b64, keys_for

STREAMS = "urn:ietf:params:xml:ns:xmpp-streams"


def stream_error_of(text: str) -> str:
    return text.split(f"xmlns='{STREAMS}'")[0].rsplit("<", 1)[1].strip()


def test_tls_required_offers_only_starttls_and_restarts_after_handshake():
    t = Transcript(tls=False)
    out = t.open()
    assert out.startswith("<?xml version='1.0'?><stream:stream xmlns='jabber:client'")
    assert f"from='{DOMAIN}'" in out
    assert out.endswith(
        "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
    )
    # a stanza sent by a client trying to inject plaintext after <starttls/> is dropped (§5.4.3.3)
    t.recv("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/><message to='x@example.test'/>")
    assert t.sent() == "<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    assert t.facts() == [ev.TlsRequested()]
    t.call("tls_established")
    out = t.open()
    assert "<mechanism>SCRAM-SHA-256</mechanism><mechanism>SCRAM-SHA-1</mechanism><mechanism>PLAIN</mechanism>" in out
    assert "starttls" not in out


def test_sasl_before_tls_is_refused_when_tls_required():
    t = Transcript(tls=False)
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'pw')}</auth>")
    assert "<unsupported-stanza-type" in t.sent()
    assert t.stream.phase is Phase.CLOSED


def test_optional_tls_never_offers_plain_in_the_clear():
    t = Transcript(tls=False, tls_required=False)
    out = t.open()
    assert "<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>" in out and "PLAIN" not in out
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'pw')}</auth>")
    assert "<encryption-required/>" in t.sent()


@pytest.mark.parametrize(
    ("header", "condition"),
    [
        (HEADER.replace("jabber:client", "jabber:server"), "invalid-namespace"),
        (HEADER.replace("http://etherx.jabber.org/streams", "urn:wrong"), "invalid-namespace"),
        (HEADER.replace("version='1.0'", "version='0.9'"), "unsupported-version"),
        (HEADER.replace(" version='1.0'", ""), "unsupported-version"),
        (HEADER.replace(f"to='{DOMAIN}'", "to='other.test'"), "host-unknown"),
        (HEADER.replace(f"to='{DOMAIN}'", "to='@@'"), "host-unknown"),
    ],
)
def test_bad_headers_get_our_header_then_the_stream_error(header, condition):
    t = Transcript()
    out = t.recv(header).sent()
    assert out.startswith("<?xml version='1.0'?><stream:stream ")
    assert f"<stream:error><{condition} xmlns='{STREAMS}'/>" in out
    assert out.endswith("</stream:stream>")
    (closed,) = t.facts()
    assert closed == ev.StreamClosed(closed.error, by_peer=False) and closed.error.condition.value == condition


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
def test_scram_success_then_restart_then_bind(mechanism):
    t = Transcript()
    t.open()
    out = t.scram_login("alice", "s3cret", keys_for("s3cret", mechanism), mechanism)
    assert out == ""  # nothing is sent until the host says this node serves alice
    assert t.facts() == [ev.PasswordVerified("alice", mechanism)]
    t.call("accept_login")
    assert t.sent().startswith(f"<success xmlns='{SASL}'>")  # carries the server signature
    out = t.open()
    assert "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/>" in out
    assert "<sm xmlns='urn:xmpp:sm:3'/>" in out and "<csi xmlns='urn:xmpp:csi:0'/>" in out
    t.recv("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
    (asked,) = t.facts()
    assert isinstance(asked, ev.BindRequested) and t.sent() == ""  # the host decides first
    t.call("bind_done", None)
    (bound,) = t.facts()
    assert bound == ev.ResourceBound(asked.jid)
    assert bound.jid.local == "alice" and bound.jid.domain == DOMAIN and len(bound.jid.resource) == 16
    assert t.sent() == (
        f"<iq type='result' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><jid>{bound.jid}</jid></bind></iq>"
    )


def test_wrong_password_and_unknown_user_fail_alike():
    t = Transcript()
    t.open()
    wrong = t.scram_login("alice", "guess", keys_for("s3cret"))
    (failed,) = t.facts()
    unknown = t.scram_login("mallory", "guess", None)
    assert wrong == unknown == f"<failure xmlns='{SASL}'><not-authorized/></failure>"
    assert failed == ev.AuthFailed("alice", "SCRAM-SHA-256", SaslCondition.NOT_AUTHORIZED)


def test_too_many_failures_end_the_stream():
    t = Transcript(max_auth_failures=2)
    t.open()
    t.scram_login("alice", "guess", keys_for("s3cret"))
    t.facts()
    out = t.scram_login("alice", "guess2", keys_for("s3cret"))
    assert "<not-authorized/></failure>" in out and "<policy-violation" in out and out.endswith("</stream:stream>")


@pytest.mark.parametrize(
    ("auth", "condition"),
    [
        (f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>!!!not base64!!!</auth>", "incorrect-encoding"),
        (f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64('no-nul-bytes')}</auth>", "malformed-request"),
        (f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{b64('garbage')}</auth>", "malformed-request"),
        (f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{b64(bytes([0xff, 0xfe]))}</auth>", "malformed-request"),
        (f"<auth xmlns='{SASL}' mechanism='DIGEST-MD5'/>", "invalid-mechanism"),
        (f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64('bob@example.test' + chr(0) + 'alice' + chr(0) + 'x')}</auth>",
         "invalid-authzid"),
        (f"<response xmlns='{SASL}'>{b64('x')}</response>", "malformed-request"),
        (f"<abort xmlns='{SASL}'/>", "aborted"),
    ],
    ids=["base64", "plain", "scram-first", "utf8", "mechanism", "authzid", "response", "abort"],
)
def test_sasl_garbage_gets_the_rfc_condition(auth, condition):
    t = Transcript()
    t.open()
    out = t.recv(auth).sent()
    assert out.startswith(f"<failure xmlns='{SASL}'><{condition}/>") and out.endswith("</failure>")
    assert t.stream.phase is Phase.AUTH
    (failed,) = t.facts()
    assert failed.condition.value == condition


def test_sasl_garbage_failure_elements():
    t = Transcript()
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>%%%</auth>")
    assert t.sent() == f"<failure xmlns='{SASL}'><incorrect-encoding/><text>invalid base64</text></failure>"
    (failed,) = t.facts()
    assert failed.condition is SaslCondition.INCORRECT_ENCODING and failed.username is None


def test_plain_is_checked_against_scram_sha256_keys():
    t = Transcript()
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'Alice' + chr(0) + 's3cret')}</auth>")
    assert t.facts() == [ev.CredentialsRequested("alice", "SCRAM-SHA-256")]
    keys = keys_for("s3cret")
    t.call("credentials_found", keys)
    assert t.facts() == [ev.DerivationRequested(b"s3cret", keys.salt, keys.iterations)]  # PBKDF2 off-loop
    t.call("password_derived", sasl.salted_password(b"s3cret", keys.salt, keys.iterations))
    assert t.facts() == [ev.PasswordVerified("alice", "PLAIN")]
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'nope')}</auth>")
    assert t.facts() == []  # queued: the host has not answered the first login yet
    t.call("accept_login")
    assert t.sent() == f"<success xmlns='{SASL}'/>"


def test_plain_wrong_password():
    t = Transcript()
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'nope')}</auth>")
    t.facts()
    keys = keys_for("s3cret")
    t.call("credentials_found", keys)
    assert t.sent() == ""  # deriving
    t.call("password_derived", sasl.salted_password(b"nope", keys.salt, keys.iterations))
    assert t.sent() == f"<failure xmlns='{SASL}'><not-authorized/></failure>"


def test_scram_without_initial_response_gets_an_empty_challenge():
    t = Transcript()
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='SCRAM-SHA-1'/>")
    assert t.sent() == f"<challenge xmlns='{SASL}'/>"
    t.recv(f"<response xmlns='{SASL}'>{b64('n,,n=alice,r=abcdef')}</response>")
    assert t.facts() == [ev.CredentialsRequested("alice", "SCRAM-SHA-1")]


def test_refused_login_see_other_host():
    t = Transcript()
    t.open()
    t.scram_login("alice", "s3cret", keys_for("s3cret"))
    t.facts()
    t.call("refuse_login", StreamError(StreamCondition.SEE_OTHER_HOST, other_host="127.0.0.1:5232"))
    assert t.sent() == (
        f"<stream:error><see-other-host xmlns='{STREAMS}'>127.0.0.1:5232</see-other-host></stream:error>"
        "</stream:stream>"
    )


def test_refused_login_sasl_failure_keeps_the_stream():
    t = Transcript()
    t.open()
    t.scram_login("alice", "s3cret", keys_for("s3cret"))
    t.facts()
    t.call("refuse_login", SaslFailure(SaslCondition.TEMPORARY_AUTH_FAILURE, "served by n2"))
    assert t.sent() == f"<failure xmlns='{SASL}'><temporary-auth-failure/><text>served by n2</text></failure>"
    assert t.stream.phase is Phase.AUTH


def test_database_down_during_key_lookup_is_a_temporary_failure():
    t = Transcript()
    t.open()
    t.recv(f"<auth xmlns='{SASL}' mechanism='PLAIN'>{b64(chr(0) + 'alice' + chr(0) + 'x')}</auth>")
    t.call("credentials_unavailable", "database unavailable")
    assert "<temporary-auth-failure/>" in t.sent()


def test_stanza_before_auth_is_not_authorized():
    t = Transcript()
    t.open()
    out = t.recv("<message to='bob@example.test'><body>x</body></message>").sent()
    assert f"<not-authorized xmlns='{STREAMS}'/>" in out


def test_auth_timer_closes_unauthenticated_streams_only():
    t = Transcript()
    t.open()
    t.call("timer_fired", Timer.AUTH)
    assert f"<connection-timeout xmlns='{STREAMS}'/>" in t.sent()
    bound = Transcript()
    bound.login_and_bind()
    bound.call("timer_fired", Timer.AUTH)
    assert bound.sent() == "" and bound.stream.phase is Phase.BOUND


def test_requested_resource_and_invalid_resource():
    t = Transcript()
    t.login_and_bind("laptop")
    assert str(t.stream.jid) == f"alice@{DOMAIN}/laptop"
    t2 = Transcript()
    t2.open()
    t2.scram_login("alice", "s3cret", keys_for("s3cret"))
    t2.call("accept_login")
    t2.recv(HEADER)
    t2.sent()
    t2.recv("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
            "<resource>\x7f</resource></bind></iq>")
    assert "<bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in t2.sent()
    assert t2.stream.phase is Phase.BIND


def test_registration_form_and_request():
    t = Transcript(registration_enabled=True)
    assert "<register xmlns='http://jabber.org/features/iq-register'/>" in t.open()
    t.recv("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
    assert "<username/><password/>" in t.sent()
    t.recv("<iq type='set' id='r2'><query xmlns='jabber:iq:register'>"
           "<username>Carol</username><password>pw</password></query></iq>")
    (request,) = t.facts()
    assert request == ev.RegistrationRequested("carol", "pw")
    t.call("registration_done", None)
    assert t.sent() == "<iq type='result' id='r2'/>"


def test_registration_is_off_by_default():
    t = Transcript()
    assert "iq-register" not in t.open()
    t.recv("<iq type='get' id='r1'><query xmlns='jabber:iq:register'/></iq>")
    assert f"<not-authorized xmlns='{STREAMS}'/>" in t.sent()


def test_a_shed_login_gets_our_header_then_resource_constraint_before_tls():
    t = Transcript(tls=False)
    t.call("refuse_on_header", StreamError(StreamCondition.RESOURCE_CONSTRAINT, "too many logins in progress"))
    out = t.open()
    assert out.startswith("<?xml version='1.0'?><stream:stream") and "starttls" not in out
    assert stream_error_of(out) == "resource-constraint"
    assert out.endswith("</stream:stream>")
    assert t.stream.phase is Phase.CLOSED
    (closed,) = t.facts()
    assert isinstance(closed, ev.StreamClosed) and closed.error.condition is StreamCondition.RESOURCE_CONSTRAINT


def test_a_bind_the_host_refuses_gets_the_error_and_may_be_retried():
    """RFC 6120 §7.6.2.1: over the account's resource quota, resource-constraint; the
    stream stays in the bind phase, input sent meanwhile waits for the answer."""
    t = Transcript()
    t.open()
    t.scram_login("alice", "s3cret", keys_for("s3cret"))
    t.call("accept_login")
    t.recv(HEADER)
    t.sent()
    t.facts()
    t.recv("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r1</resource></bind></iq>"
           "<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r2</resource></bind></iq>")
    assert t.facts() == [ev.BindRequested(JID.parse(f"alice@{DOMAIN}/r1"))]
    t.call("bind_done", StanzaError(Condition.RESOURCE_CONSTRAINT, "at most 10"))
    assert t.sent() == ("<iq type='error' id='b1'><error type='wait'>"
                        "<resource-constraint xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"
                        "<text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>at most 10</text></error></iq>")
    assert t.stream.phase is Phase.BIND and t.stream.jid == JID.parse(f"alice@{DOMAIN}")
    assert t.facts() == [ev.BindRequested(JID.parse(f"alice@{DOMAIN}/r2"))]  # the queued second try
    t.call("bind_done", None)
    assert t.facts() == [ev.ResourceBound(JID.parse(f"alice@{DOMAIN}/r2"))]
    assert "<jid>alice@example.test/r2</jid>" in t.sent() and t.stream.phase is Phase.BOUND
