"""Feature modules of a node: each is one file exposing `register(router)`.

Rules: `FEATURE_MODULES` lists, in registration order, the modules the node loads
(`server.node` imports each and calls `register(router)`). Append yours; a duplicate
route raises `DuplicateRoute` at start-up. Features see the server only through
`FeatureContext` (`server.context`).

Layers: features sit on top. They register routes and handlers, and a handler may call
the services below them (`server.messaging`, `server.presence_service`,
`server.activation`, `server.xmpp.backup`); a feature never imports `server.net`,
`server.srm` or `server.cluster`. Nothing but the composition root (`server.node`)
imports a feature: what the SRM, the cluster and the connections need from presence,
messages and sessions lives in those services (tests/unit/features/test_layering.py).
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
    "presence_ha.server.features.blocking",  # XEP-0191
    "presence_ha.server.features.vcard",  # XEP-0054, XEP-0153
    "presence_ha.server.features.last_activity",  # XEP-0012
    "presence_ha.server.features.entity_time",  # XEP-0202
    "presence_ha.server.features.pep",  # XEP-0163 PEP (XEP-0060 subset, XEP-0222/0223), XEP-0115 caps
    "presence_ha.server.features.mam",  # XEP-0313 archive, XEP-0359 stanza ids
]
