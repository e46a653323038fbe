"""User commands: add, remove, list, import, assign, rebalance (SPEC §2).

Rules of this module:
- A password comes from `--password`, `--password-stdin` (first line) or a hidden,
  confirmed prompt; it is turned into SCRAM keys and never stored or echoed.
- Adding or importing users is refused while a node is failed over (SPEC §2).
- `user import` reads CSV rows `username,password` (an optional header row
  `username,password` is skipped) and reports how long the import took.
"""

from __future__ import annotations

import csv
import sys

import click

from presence_ha.db import assignments, users
from presence_ha.server.cli.common import db_options
from presence_ha.server.cli.database import echo_json, echo_table, json_help, json_option, open_session, run


@click.group("user")
def user_group() -> None:
    """Manage users: accounts, SCRAM credentials, assigned and active node."""


def _read_password(password: str | None, from_stdin: bool) -> str:
    if password is not None and from_stdin:
        raise click.UsageError("give --password or --password-stdin, not both")
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if password is not None:
        return password
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@user_group.command("add")
@click.argument("username")
@click.option("--password", help="The password (visible in the process list; prefer the prompt or --password-stdin).")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
@db_options
def user_add(db_url: str, username: str, password: str | None, password_stdin: bool) -> None:
    """Add USERNAME (a JID localpart), assigned per the user assignment mode."""
    secret = _read_password(password, password_stdin)

    async def go() -> users.UserInfo:
        async with open_session(db_url) as session:
            return await users.add_user(session, username, secret)

    info = run(go())
    click.echo(f"user {info.username!r} added, assigned to {info.assigned_node or 'no node'}")


@user_group.command("remove")
@click.argument("username")
@db_options
def user_remove(db_url: str, username: str) -> None:
    """Delete USERNAME with its credentials, roster and stored messages."""

    async def go() -> None:
        async with open_session(db_url) as session:
            await users.remove_user(session, username)

    run(go())
    click.echo(f"user {username!r} removed")


@user_group.command("list", epilog=json_help('{"users": [{"username", "assigned", "active"}]}   '
                                             '(assigned: home node, active: serving node; null when none)'))
@click.option("--node", "node_name", help="Only users assigned to this node.")
@json_option
@db_options
def user_list(db_url: str, node_name: str | None, as_json: bool) -> None:
    """List users with their assigned (home) and active (serving) node."""

    async def go() -> list[users.UserInfo]:
        async with open_session(db_url) as session:
            return await users.list_users(session, node_name)

    listed = run(go())
    if as_json:
        echo_json({"users": [{"username": u.username, "assigned": u.assigned_node, "active": u.active_node}
                             for u in listed]})
        return
    rows = [(u.username, u.assigned_node, u.active_node) for u in listed]
    echo_table(("user", "assigned", "active"), rows)
    click.echo(f"{len(rows)} user(s)")


def _read_csv(path: str) -> list[tuple[str, str]]:
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or (number == 1 and [c.strip().lower() for c in row] == ["username", "password"]):
                continue
            if len(row) != 2:
                raise click.ClickException(f"{path} line {number}: expected username,password")
            rows.append((row[0].strip(), row[1]))
    return rows


@user_group.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@db_options
def user_import(db_url: str, file: str) -> None:
    """Add every user of FILE (CSV: username,password); all or nothing."""
    rows = _read_csv(file)

    async def go() -> users.ImportReport:
        async with open_session(db_url) as session:
            return await users.bulk_import(session, rows)

    report = run(go())
    click.echo(f"imported {report.imported} user(s) in {report.seconds:.1f} s")


@user_group.command("assign")
@click.argument("username")
@click.argument("node", required=False)
@db_options
def user_assign(db_url: str, username: str, node: str | None) -> None:
    """Assign USERNAME to NODE by hand (mode None); without NODE, unassign."""

    async def go() -> None:
        async with open_session(db_url) as session:
            await assignments.assign_user(session, username, node)

    run(go())
    click.echo(f"user {username!r} assigned to {node or 'no node'}")


@user_group.command("rebalance")
@db_options
def user_rebalance(db_url: str) -> None:
    """Re-run the Sync Agent: spread users per the assignment mode, moving as few as possible."""

    async def go() -> int:
        async with open_session(db_url) as session:
            return await assignments.rebalance(session)

    click.echo(f"{run(go())} user(s) moved")
