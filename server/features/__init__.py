"""Feature modules of a node: each is one file exposing `register(router)`.

Rules: `FEATURE_MODULES` lists, in registration order, the modules the node loads
(`server.node` imports each and calls `register(router)`). Append yours; a duplicate
route raises `DuplicateRoute` at start-up. Features see the server only through
`FeatureContext` (`server.context`).
"""

FEATURE_MODULES: list[str] = [
    "presence_ha.server.features.ping",  # XEP-0199
    "presence_ha.server.features.disco",  # XEP-0030
    "presence_ha.server.features.version",  # XEP-0092
    "presence_ha.server.features.roster",  # RFC 6121 §2
    "presence_ha.server.features.subscription",  # RFC 6121 §3
    "presence_ha.server.features.presence",  # RFC 6121 §4
    "presence_ha.server.features.message",  # RFC 6121 §5, §8.5
    "presence_ha.server.features.carbons",  # XEP-0280
    "presence_ha.server.features.inactive_session",  # SPEC §8 inactive sessions, activation
    "presence_ha.server.features.ha_backup_info",  # SPEC §8 backup node for clients
]
