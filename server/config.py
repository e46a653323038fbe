"""The node process configuration: one tree of frozen dataclasses, validated once.

Rules of this module:
- Precedence (hypercorn's): dataclass defaults, then one TOML file, then environment
  variables (`PRESENCE_HA_DB`, `PRESENCE_HA_NODE`, `PRESENCE_HA_DATA_DIR`,
  `PRESENCE_HA_CLUSTER_KEY` -> `cluster_key` (default `<data_dir>/cluster.key`),
  `PRESENCE_HA_LINK_DIAL` -> `links.dial`, `PRESENCE_HA_LINK_TLS` -> `links.tls`,
  `PRESENCE_HA_SM_REPLICATION` ->
  `sm_replication.enabled`, `PRESENCE_HA_SM_<FIELD>` -> `sm_replication.<field>`, an
  unknown `PRESENCE_HA_SM_*` is a `ConfigError`), then CLI flags, then generic
  `--set section.key=value` overrides.
- Keys are the dataclass field names (`limits.max_stanza_bytes`). An unknown key or a
  bad value is `ConfigError(key, reason)` naming the key; nothing is silently ignored.
- Units are in the names (`auth_timeout_s`, `max_stanza_bytes`). Every timer is a field
  so tests can run in seconds.
- This file holds what a node needs before it can read the database. Addresses, ports
  and the SPEC §5 cluster parameters come from the database (nodes table,
  parameters), not from here.
- Sections: `tls`, `limits` (client connections), `cluster` (routing between nodes:
  `grace_s`, `relay_timeout_s`, `relay_open_timeout_s`, `refresh_s`,
  `location_ttl_s`, `activation_wait_s`, `replication_check_s`), `links` (the node-to-node link mesh:
  `window`, `heartbeat_interval_s`, `dead_after_s`, `handshake_timeout_s`,
  `connect_timeout_s`, `backoff_initial_s`, `backoff_max_s`, `ack_delay_s`, and
  `dial`, "n2=host:port,..." to dial a peer elsewhere than its registered address),
  `sm_replication` (XEP-0198 state copied to the backup node: `enabled`,
  `sync_timeout_s`, `max_unacked`, `takeover_wait_s`, `sweep_s`, `backup_refresh_s`),
  `quotas` (what one account may store or hold: `roster_max_items`,
  `roster_item_max_bytes`, `max_pending_subscriptions`, `offline_max_messages`,
  `offline_max_bytes`, `max_sessions_per_user`; enforced by `server.quotas`' users).
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from presence_ha.db.engine import ENV_DB_URL, sqlite_url_for
from presence_ha.server.cluster_key import ENV_CLUSTER_KEY, KEY_FILE

ENV_NODE = "PRESENCE_HA_NODE"
ENV_DATA_DIR = "PRESENCE_HA_DATA_DIR"
ENV_LINK_DIAL = "PRESENCE_HA_LINK_DIAL"
ENV_LINK_TLS = "PRESENCE_HA_LINK_TLS"
ENV_SM_SWITCH = "PRESENCE_HA_SM_REPLICATION"
ENV_SM_PREFIX = "PRESENCE_HA_SM_"
DEFAULT_DATA_DIR = "data"
DIRECT_TLS_OFFSET = 5  # client, srm, admin, link, metrics are +0..+4 of a block of 10 (db.nodes)


class ConfigError(ValueError):
    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"config {key}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class TlsConfig:
    cert_path: str | None = None  # PEM certificate chain; None: self-signed in data_dir
    key_path: str | None = None
    required: bool = True  # RFC 6120 §5.3.1: STARTTLS mandatory before SASL
    # XEP-0368 direct TLS (TLS from the first byte, ALPN "xmpp-client") on a port of its
    # own; None or 0: off. Not one of the database's node ports (db.nodes): `up` sets it
    # to the client port + DIRECT_TLS_OFFSET, a port of the node's block left free.
    direct_port: int | None = None


@dataclass(frozen=True)
class LimitsConfig:
    max_stanza_bytes: int = 256 * 1024  # over it: policy-violation (RFC 6120 §13.12)
    auth_timeout_s: float = 30.0  # unauthenticated connections are closed after this
    rate_bytes_per_s: int = 256 * 1024  # per-connection token bucket refill
    rate_burst_bytes: int = 1024 * 1024  # bucket size; an empty bucket is policy-violation
    max_write_buffer_bytes: int = 2 * 1024 * 1024  # a client that does not read is dropped
    max_auth_failures: int = 3  # per stream, then policy-violation (RFC 6120 §6.4.5)
    # Login throttle (server.net.limits.AuthThrottle), applied BEFORE the password check,
    # per account and per address: the n-th attempt of a key (recent failures plus
    # attempts in flight) is checked auth_throttle_base_s * 2**(n-2) after the previous
    # one, capped at auth_throttle_max_s; an attempt that would wait longer is refused
    # unchecked with temporary-auth-failure. Successes wait like failures. 0 turns it off.
    auth_throttle_base_s: float = 1.0  # wait before the 2nd attempt of an IP or user...
    auth_throttle_max_s: float = 30.0  # ...doubling per attempt up to this
    auth_throttle_window_s: float = 300.0  # failures older than this are forgotten
    # Per source address (server.net.limits.AddressBook): beyond these a new connection
    # is refused at once, before its stream header is read (policy-violation /
    # resource-constraint). The defaults admit a load generator's 10,000 sessions from
    # one address; a public server lowers them.
    max_connections_per_address: int = 20_000
    max_unauthenticated_per_address: int = 1000
    sm_resume_timeout_s: int = 300  # XEP-0198 resumption window
    shutdown_timeout_s: float = 10.0  # graceful shutdown budget
    # The login gate (server.net.limits.LoginGate): connections negotiating at once are
    # bounded by what the node completes in login_budget_s at its measured rate, and
    # never fewer than logins_in_progress_min (a cold node has no rate yet: 1,000
    # logins offered at 500/s must not be shed); beyond it a new stream gets a
    # retryable resource-constraint. The budget stays well inside auth_timeout_s.
    logins_in_progress_min: int = 1000
    login_budget_s: float = 15.0
    # Pending input of a client stream (server.xmpp.parser.ParserLimits); beyond each, the
    # stream ends with policy-violation: the stream header with what precedes it, the
    # namespace declarations on it, and an incomplete tag (start or end tag still open)
    # before authentication and after it (either one capped at max_stanza_bytes).
    max_header_bytes: int = 4096
    max_header_namespaces: int = 16
    max_tag_bytes_unauthenticated: int = 4096
    max_tag_bytes: int = 16 * 1024


@dataclass(frozen=True)
class ClusterTimers:
    """Routing between the nodes of the cluster (server.cluster)."""

    grace_s: float = 3.0  # a peer down longer than this is unreachable for new stanzas
    relay_timeout_s: float = 10.0  # relayed sessions end after their peer is gone this long
    relay_open_timeout_s: float = 10.0  # longest wait for the active node to open a relayed session
    refresh_s: float = 1.0  # move-fingerprint check period
    location_ttl_s: float = 10.0  # a cached user location is read again after this
    activation_wait_s: float = 2.0  # users moved here: longest wait for their activation before re-routing
    replication_check_s: float = 30.0  # the db_replication_setup gauge is refreshed this often


@dataclass(frozen=True)
class LinksConfig:
    """The node-to-node link mesh (server.cluster.links, server.link.LinkOptions)."""

    window: int = 1024  # max unacknowledged messages per peer
    heartbeat_interval_s: float = 1.0
    dead_after_s: float = 5.0
    handshake_timeout_s: float = 5.0
    connect_timeout_s: float = 3.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    ack_delay_s: float = 0.005  # longest wait of an owed ack
    dial: str = ""  # "n2=host:port,...": dial a peer there (a tunnel, NAT, a test's fault proxy)
    # TLS 1.3 with both sides' certificates from the cluster CA (server.tls.link_tls), on the
    # link mesh and the SRM peer link. `false` sends them in clear: only to measure its cost.
    tls: bool = True

    @property
    def dial_addresses(self) -> dict[str, tuple[str, int]]:
        """`{node: (host, port)}` from `dial` (validated at load)."""
        return parse_dial(self.dial)


@dataclass(frozen=True)
class SmReplicationConfig:
    """XEP-0198 sessions replicated to the backup node (server.cluster.sm_mirror)."""

    enabled: bool = True
    sync_timeout_s: float = 2.0  # longest an <a/> waits for the backup's confirmation
    max_unacked: int = 1000  # per session; beyond, the session is not replicated
    takeover_wait_s: float = 10.0  # a resume on the backup waits this long for the takeover
    sweep_s: float = 0.5  # reachability and expiry checks
    backup_refresh_s: float = 5.0  # how often the backup node is read from the database


@dataclass(frozen=True)
class QuotasConfig:
    """What one account may store or hold (server.quotas; README "Quotas").

    The defaults are generous for people and tight for a script: ejabberd's
    mod_offline keeps 100 messages per user by default (access_max_user_messages),
    Prosody and ejabberd leave rosters and resources unbounded unless configured
    (ejabberd's max_user_sessions, Prosody's mod_limits).
    """

    roster_max_items: int = 2000  # a new item beyond: not-allowed (roster set) / presence error
    roster_item_max_bytes: int = 4096  # UTF-8 bytes of name + groups; beyond: not-acceptable
    max_pending_subscriptions: int = 250  # unanswered inbound requests kept; beyond: resource-constraint
    offline_max_messages: int = 200  # stored per user; beyond: service-unavailable (XEP-0160 §3)
    offline_max_bytes: int = 1024 * 1024  # stored bytes per user; beyond: service-unavailable
    max_sessions_per_user: int = 10  # resources of one account on a node; beyond: resource-constraint at bind


def parse_dial(text: str) -> dict[str, tuple[str, int]]:
    """`{node: (host, port)}` from "n2=host:port, n3=[::1]:5" (ConfigError `links.dial`)."""
    result: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, address = item.partition("=")
        host, _, port = address.rpartition(":")
        if not name or not host or not port.isdigit():
            raise ConfigError("links.dial", f"{item!r} is not NODE=HOST:PORT")
        result[name] = (host.strip("[]"), int(port))
    return result


@dataclass(frozen=True)
class NodeConfig:
    node_name: str
    db_url: str
    data_dir: str = DEFAULT_DATA_DIR
    cluster_key: str = ""  # the cluster key file (server.cluster_key); "": <data_dir>/cluster.key
    listen_host: str | None = None  # override the node's host from the database (e.g. 0.0.0.0)
    # uvloop: 5-8% less CPU per login, stanza and broadcast than asyncio's own loop
    # (bench-compare, same run); "asyncio" for debugging with asyncio's own tools.
    event_loop: str = "uvloop"
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    cluster: ClusterTimers = field(default_factory=ClusterTimers)
    links: LinksConfig = field(default_factory=LinksConfig)
    sm_replication: SmReplicationConfig = field(default_factory=SmReplicationConfig)
    quotas: QuotasConfig = field(default_factory=QuotasConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def cluster_key_path(self) -> Path:
        return Path(self.cluster_key) if self.cluster_key else self.data_path / KEY_FILE


EVENT_LOOPS = ("uvloop", "asyncio")

_POSITIVE = {
    "limits.max_stanza_bytes", "limits.auth_timeout_s", "limits.rate_bytes_per_s", "limits.rate_burst_bytes",
    "limits.max_write_buffer_bytes", "limits.max_auth_failures", "limits.sm_resume_timeout_s",
    "limits.shutdown_timeout_s", "limits.auth_throttle_window_s", "limits.logins_in_progress_min",
    "limits.login_budget_s", "limits.max_connections_per_address", "limits.max_unauthenticated_per_address",
    "limits.max_header_bytes", "limits.max_header_namespaces",
    "limits.max_tag_bytes_unauthenticated", "limits.max_tag_bytes",
    "cluster.grace_s", "cluster.relay_timeout_s", "cluster.relay_open_timeout_s", "cluster.refresh_s",
    "cluster.location_ttl_s", "cluster.activation_wait_s", "cluster.replication_check_s",
    "links.window", "links.heartbeat_interval_s", "links.dead_after_s", "links.handshake_timeout_s",
    "links.connect_timeout_s", "links.backoff_initial_s", "links.backoff_max_s", "links.ack_delay_s",
    "sm_replication.sync_timeout_s", "sm_replication.max_unacked", "sm_replication.takeover_wait_s",
    "sm_replication.sweep_s", "sm_replication.backup_refresh_s",
    "quotas.roster_max_items", "quotas.roster_item_max_bytes", "quotas.max_pending_subscriptions",
    "quotas.offline_max_messages", "quotas.offline_max_bytes", "quotas.max_sessions_per_user",
}


def _convert(key: str, hint: Any, raw: Any) -> Any:
    """`raw` (TOML value or text from env/--set) as the field's type."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and type(None) in args:
        if raw is None or (isinstance(raw, str) and raw.lower() in ("", "none")):
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return word in ("true", "yes", "on", "1")
        raise ConfigError(key, f"{raw!r} is not a boolean")
    if hint in (int, float):
        if isinstance(raw, bool):
            raise ConfigError(key, f"{raw!r} is not a number")
        if hint is int and isinstance(raw, float) and not raw.is_integer():
            raise ConfigError(key, f"{raw!r} is not an integer")
        try:
            return hint(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, f"{raw!r} is not {'an integer' if hint is int else 'a number'}") from None
    if hint is str:
        if not isinstance(raw, (str, int, float)) or isinstance(raw, bool):
            raise ConfigError(key, f"{raw!r} is not text")
        return str(raw)
    raise ConfigError(key, f"unsupported type {hint}")


def _build(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"
            raise ConfigError(prefix + key, "unknown key" + hint)
    kwargs: dict[str, Any] = {}
    for name, f in known.items():
        key, hint = prefix + name, hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            sub = values.get(name, {})
            if not isinstance(sub, Mapping):
                raise ConfigError(key, "must be a table/section")
            kwargs[name] = _build(hint, sub, key + ".")
        elif name in values:
            kwargs[name] = _convert(key, hint, values[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(key, "required")
    return cls(**kwargs)


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{part} is not a section")
        node = child
    node[parts[-1]] = value


def parse_set(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(item, "expected key=value")
    return key.strip(), value.strip()


def validate(config: NodeConfig) -> NodeConfig:
    if not config.node_name:
        raise ConfigError("node_name", "required (--name or $PRESENCE_HA_NODE)")
    if config.event_loop not in EVENT_LOOPS:
        raise ConfigError("event_loop", f"{config.event_loop!r} is not one of {', '.join(EVENT_LOOPS)}")
    for key in _POSITIVE:
        section, name = key.split(".")
        if getattr(getattr(config, section), name) <= 0:
            raise ConfigError(key, "must be positive")
    limits = config.limits
    if limits.auth_throttle_base_s < 0 or limits.auth_throttle_max_s < limits.auth_throttle_base_s:
        raise ConfigError("limits.auth_throttle_max_s", "must be >= auth_throttle_base_s >= 0")
    if limits.max_unauthenticated_per_address > limits.max_connections_per_address:
        raise ConfigError("limits.max_unauthenticated_per_address", "must be <= limits.max_connections_per_address")
    if limits.rate_burst_bytes < limits.max_stanza_bytes:
        raise ConfigError("limits.rate_burst_bytes", "must be >= limits.max_stanza_bytes")
    if config.tls.direct_port is not None and not 0 <= config.tls.direct_port <= 65535:
        raise ConfigError("tls.direct_port", "must be a TCP port (1-65535), or 0 for off")
    if (config.tls.cert_path is None) != (config.tls.key_path is None):
        raise ConfigError("tls.key_path", "give both tls.cert_path and tls.key_path, or neither")
    links = config.links
    if links.backoff_max_s < links.backoff_initial_s:
        raise ConfigError("links.backoff_max_s", "must be >= links.backoff_initial_s")
    if links.dead_after_s <= links.heartbeat_interval_s:
        raise ConfigError("links.dead_after_s", "must be > links.heartbeat_interval_s")
    parse_dial(links.dial)
    return config


def _env_overrides(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(dotted key, text) for the environment variables that set config keys."""
    found: list[tuple[str, str]] = []
    for var, key in ((ENV_DB_URL, "db_url"), (ENV_NODE, "node_name"), (ENV_DATA_DIR, "data_dir"),
                     (ENV_CLUSTER_KEY, "cluster_key"),
                     (ENV_LINK_DIAL, "links.dial"), (ENV_LINK_TLS, "links.tls")):
        if env.get(var):
            found.append((key, env[var]))
    sm_fields = {f.name for f in dataclasses.fields(SmReplicationConfig)} - {"enabled"}
    for var in sorted(v for v in env if v.startswith(ENV_SM_PREFIX)):
        name = "enabled" if var == ENV_SM_SWITCH else var.removeprefix(ENV_SM_PREFIX).lower()
        if name != "enabled" and name not in sm_fields:
            raise ConfigError(var, f"unknown setting (known: {ENV_SM_SWITCH}, "
                                   + ", ".join(ENV_SM_PREFIX + f.upper() for f in sorted(sm_fields)) + ")")
        found.append(("sm_replication." + name, env[var]))
    return found


def load_config(
    file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    sets: list[str] | tuple[str, ...] = (),
) -> NodeConfig:
    """Merge defaults < TOML `file` < `env` < `flags` (dotted keys) < `sets`; validate."""
    tree: dict[str, Any] = {}
    if file is not None:
        try:
            tree = tomllib.loads(Path(file).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(str(file), f"cannot read: {exc}") from None
    for key, value in _env_overrides(env or {}):
        _set_path(tree, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_path(tree, key, value)
    for item in sets:
        _set_path(tree, *parse_set(item))
    tree.setdefault("node_name", "")
    if not tree.get("db_url"):
        tree["db_url"] = sqlite_url_for(tree.get("data_dir") or DEFAULT_DATA_DIR)
    return validate(_build(NodeConfig, tree, ""))
