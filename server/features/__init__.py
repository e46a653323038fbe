"""Feature modules of a node: each is one file exposing `register(router)`.

Rules: `FEATURE_MODULES` lists, in registration order, the modules the node loads
(`server.node` imports each and calls `register(router)`). Append yours; a duplicate
route raises `DuplicateRoute` at start-up. Features see the server only through
`FeatureContext` (`server.features.context`).
"""

FEATURE_MODULES: list[str] = [
    "server.features.ping",  # XEP-0199
    "server.features.disco",  # XEP-0030
    "server.features.version",  # XEP-0092
    "server.features.roster",  # RFC 6121 §2
    "server.features.subscription",  # RFC 6121 §3
    "server.features.presence",  # RFC 6121 §4
    "server.features.message",  # RFC 6121 §5, §8.5
    "server.features.carbons",  # XEP-0280
    "server.features.inactive_session",  # SPEC §8 inactive sessions, activation
    "server.features.ha_backup_info",  # SPEC §8 backup node for clients
]
