"""A login storm against one real node: admitted at its pace, the excess shed, all in.

Scenario (issue #7's re-login storm, scaled down): 150 users log in at once with the
load tester's real client (TLS, PLAIN) to a node whose login gate admits about 10
negotiating connections at a time (a floor of 10, a budget of 0.1 s at its rate). Some
attempts are answered with the retryable stream error `resource-constraint` before TLS;
those clients back off and try again, as the failover load test's agents do. In the end
every user is logged in, no attempt failed with a non-retryable error, and the node is
still at ease (a fresh login succeeds at once).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from presence_ha.loadtest.scenario import is_retryable, retry_backoff
from presence_ha.loadtest.xmpp_client import ClientConfig, XmppClient, XmppError
from tests.integration.cluster import DOMAIN, FAST_LIMITS, cluster_factory  # noqa: F401

USERS = 150
GATE = 10
DEADLINE_S = 120.0


@pytest.fixture
def gated_node(cluster_factory):  # noqa: F811
    users = [(f"u{i}", "pw") for i in range(USERS)]
    sets = (*FAST_LIMITS, f"limits.logins_in_progress_min={GATE}", "limits.login_budget_s=0.1")
    return cluster_factory(nodes=1, users=users, sets=sets).node("n1")


async def _login_with_retries(config: ClientConfig, rng: random.Random, refusals: Counter) -> XmppClient:
    attempt = 0
    while True:
        client = XmppClient(config)
        try:
            await client.login()
            return client
        except XmppError as exc:
            reason = exc.condition or str(exc)
            if not is_retryable(reason):
                raise
            refusals[reason] += 1
            attempt += 1
            await asyncio.sleep(retry_backoff(rng, attempt))


async def test_a_login_storm_is_shed_with_a_retryable_error_and_everyone_gets_in(gated_node):
    rng = random.Random(7)
    refusals: Counter = Counter()

    def config(i: int, resource: str = "bench") -> ClientConfig:
        return ClientConfig(gated_node.host, gated_node.client_port, DOMAIN, f"u{i}", "pw", resource=resource,
                            tls=True, timeout_s=60)

    clients = await asyncio.wait_for(
        asyncio.gather(*(_login_with_retries(config(i), rng, refusals) for i in range(USERS))), DEADLINE_S
    )
    try:
        assert len(clients) == USERS
        assert refusals["resource-constraint"] > 0, "the burst should exceed the gate"
        assert set(refusals) == {"resource-constraint"}
        late = XmppClient(config(0, resource="late"))
        await late.login()  # the gate emptied as the sessions were bound
        await late.close()
    finally:
        await asyncio.gather(*(c.close() for c in clients))
