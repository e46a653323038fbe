"""Fixtures for the data-layer tests: a migrated real database and the CLI on it.

Rules: every test gets a fresh database from the root `db_url` fixture (SQLite temp
file, or a new PostgreSQL database); the schema is made by the real migrations; the
CLI runs in-process through click's CliRunner against that same URL.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from click.testing import CliRunner, Result

from presence_ha.db.engine import make_engine, make_session_factory
from presence_ha.server.cli import main


@dataclass
class Cli:
    url: str

    def __call__(self, *args: str, input: str | None = None, ok: bool = True) -> Result:
        result = CliRunner().invoke(main, [*args, "--db", self.url], input=input)
        assert "Traceback" not in result.output
        if ok:
            assert result.exit_code == 0, f"{args}: {result.output}"
        return result

    def fails(self, *args: str, match: str) -> str:
        """Run a command that must fail with one line naming the problem."""
        result = self(*args, ok=False)
        assert result.exit_code != 0, f"{args} succeeded: {result.output}"
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), f"{args}: {result.output}"
        assert match in lines[0], f"{args}: {lines[0]!r} lacks {match!r}"
        return lines[0]


@pytest.fixture
def cli(db_url) -> Cli:
    """The CLI on a fresh database, already upgraded to head."""
    tool = Cli(db_url)
    tool("db", "upgrade")
    return tool


def query(url: str, func, *args, **kwargs):
    """Run one `db/` coroutine function on a fresh engine (from sync tests)."""

    async def go():
        engine = make_engine(url)
        try:
            async with make_session_factory(engine)() as session:
                return await func(session, *args, **kwargs)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def provision_pairs(cli: Cli, *, groups: int = 2) -> None:
    """A cluster with `groups` groups of two nodes: g1 = a1,a2; g2 = b1,b2; ..."""
    cli("cluster", "init", "--name", "tokyo", "--domain", "example.com")
    for index in range(groups):
        letter = "abcdefgh"[index]
        cli("node", "add", f"{letter}1")
        cli("node", "add", f"{letter}2")
        cli("group", "add", f"g{index + 1}", "--node", f"{letter}1", "--node", f"{letter}2")


def write_csv(path, count: int, prefix: str = "user") -> str:
    lines = ["username,password"] + [f"{prefix}{i:05d},pw-{i}-{prefix}" for i in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)
