"""`presence-ha client`: an interactive dual-connection client (SPEC §8) on `DualClient`.

Rules of this module:
- Input is stdin lines: `/msg USER TEXT` (USER without '@' is on the JID's domain),
  `/status [SHOW] [TEXT]` (SHOW one of online, away, chat, dnd, xa), `/roster`,
  `/quit`. End of input stops the client.
- Output is one line per thing seen: connection events stamped with ISO wall-clock
  time and monotonic milliseconds (downtime = the difference between two lines),
  received messages, contacts' presence, and the roster with live presence.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import click

from presence_ha.client.dual import (
    ClientEvent,
    ConnectionEvent,
    DualClient,
    LoginError,
    MessageReceived,
)
from presence_ha.client.policy import Endpoint

SHOWS = {"online": "", "away": "away", "chat": "chat", "dnd": "dnd", "xa": "xa"}


def render(event: ClientEvent) -> str:
    if isinstance(event, ConnectionEvent):
        role = event.role.value if event.role else "-"
        where = str(event.endpoint) if event.endpoint else "-"
        return f"[{event.wall} {event.mono_ms:.0f}ms] {event.kind} {role} {where} {event.detail}".rstrip()
    if isinstance(event, MessageReceived):
        return f"<< {event.sender}: {event.body}"
    state = (event.show or "online") if event.available else "offline"
    return f"** {event.jid} is {state}" + (f" ({event.status})" if event.status else "")


def roster_lines(client: DualClient) -> list[str]:
    lines = [f"roster of {client.jid}:"]
    for jid, item in sorted(client.roster.items()):
        live = ", ".join(f"{full.split('/', 1)[-1]}={show or 'online'}" for full, (show, _s) in item.presences.items())
        lines.append(f"  {jid} [{item.subscription}] {item.name} {live or 'offline'}".rstrip())
    return lines


async def stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin without blocking the loop (a pipe or a terminal; else read at once)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except (ValueError, OSError):  # a regular file: nothing to wait for
        for line in sys.stdin:
            yield line.rstrip("\r\n")
        return
    while line := await reader.readline():
        yield line.decode(errors="replace").rstrip("\r\n")


def command(client: DualClient, domain: str, line: str) -> str | None:
    """Run one input line; a line to print, or None. `/quit` raises EOFError."""
    verb, _, rest = line.strip().partition(" ")
    if verb == "/quit":
        raise EOFError
    if verb == "/roster":
        return "\n".join(roster_lines(client))
    if verb == "/msg":
        to, _, body = rest.partition(" ")
        if not to or not body:
            return "usage: /msg USER TEXT"
        to = to if "@" in to else f"{to}@{domain}"
        return None if client.send_message(to, body) else "not connected: message not sent"
    if verb == "/status":
        show, _, text = rest.partition(" ")
        if show and show not in SHOWS:
            show, text = "online", rest
        client.set_presence(SHOWS.get(show or "online", ""), text)
        return None
    if not line.strip():
        return None
    return "commands: /msg USER TEXT, /status [online|away|chat|dnd|xa] [TEXT], /roster, /quit"


async def run_client(jid: str, password: str, server: Endpoint, dual: bool, insecure: bool) -> None:
    client = DualClient(jid, password, server, dual=dual, insecure=insecure)
    client.add_listener(lambda event: click.echo(render(event)))
    await client.start()
    click.echo("\n".join(roster_lines(client)))
    domain = jid.split("@", 1)[-1].split("/", 1)[0]
    try:
        async for line in stdin_lines():
            output = command(client, domain, line)
            if output:
                click.echo(output)
    except EOFError:
        pass
    finally:
        await client.stop()


@click.command("client")
@click.option("--jid", required=True, help="The user's JID (user@domain[/resource]).")
@click.option("--password", required=True, help="The user's password.")
@click.option("--server", "server", help="host:port of the node to log in on (default: the JID's domain, port 5222).")
@click.option("--dual/--single", default=True, show_default=True,
              help="Keep an inactive backup connection (SPEC §8), or re-log in after a failure.")
@click.option("--insecure", is_flag=True, help="Accept any server certificate (self-signed test nodes).")
def client_command(jid: str, password: str, server: str | None, dual: bool, insecure: bool) -> None:
    """An interactive XMPP client with near-zero-downtime failover (SPEC §8)."""
    endpoint = Endpoint.parse(server) if server else Endpoint(jid.split("@", 1)[-1].split("/", 1)[0], 5222)
    try:
        asyncio.run(run_client(jid, password, endpoint, dual, insecure))
    except LoginError as exc:
        raise click.ClickException(f"login failed: {exc}") from None
    except KeyboardInterrupt:
        pass
