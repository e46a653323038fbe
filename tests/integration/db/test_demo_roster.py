"""`up`'s demo roster (`db.roster.befriend`) on SQLite and PostgreSQL: the users of a
circle are each other's contacts with subscription both, nobody else's; running it
again adds nothing."""

from __future__ import annotations

from presence_ha.db import roster
from tests.integration.db.conftest import query, write_csv


async def rosters(session, domain: str, names: list[str]) -> dict[str, dict[str, str]]:
    ids = await roster.user_ids(session, domain, names)
    return {name: dict(await roster.subscriptions(session, ids[name])) for name in names}


def test_circles_become_mutual_contacts(cli, tmp_path) -> None:
    cli("cluster", "init", "--name", "demo", "--domain", "example.com")
    cli("user", "import", write_csv(tmp_path / "users.csv", 5))
    circles = [["user00000", "user00001", "user00002"], ["user00003", "user00004"]]
    assert query(cli.url, roster.befriend, "example.com", circles) == 3 * 2 + 2 * 1
    assert query(cli.url, roster.befriend, "example.com", circles) == 0  # idempotent
    seen = query(cli.url, rosters, "example.com", [f"user0000{i}" for i in range(5)])
    assert seen["user00000"] == {"user00001@example.com": "both", "user00002@example.com": "both"}
    assert seen["user00003"] == {"user00004@example.com": "both"}
    assert seen["user00004"] == {"user00003@example.com": "both"}
