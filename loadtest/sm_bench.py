"""Per-stanza cost of replicating XEP-0198 state to the backup node (issue #6).

Starts a real HA pair (SQLite) twice, with replication on and off
(`PRESENCE_HA_SM_REPLICATION`), and measures on n1 (which serves both users):
- push: bob sends N messages to alice, whose stream has XEP-0198 with resumption and
  who answers every <r/> at once; messages/s until alice has all of them, and n1's
  CPU time per message (utime+stime from /proc);
- acked: alice sends M messages, each followed by <r/>, and waits for each <a/>
  (the server's ack waits for the backup's copy): mean round trip per acked stanza.

Usage: .venv/bin/python -m presence_ha.loadtest.sm_bench [--messages 5000] [--acked 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

from tests.integration.cluster import RawClient, start_ha_pair  # the test suite's pair launcher

SM = "urn:xmpp:sm:3"
USERS = (("alice", "alice-pw"), ("bob", "bob-pw"))


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def alice_reader(alice: RawClient, n: int) -> None:
    got = 0
    while got < n:
        chunk = await alice.reader.read(65536)
        if not chunk:
            raise ConnectionError("alice's stream closed")
        alice.buffer += chunk.decode(errors="replace")
        got += alice.buffer.count("</message>")
        if f"<r xmlns='{SM}'/>" in alice.buffer:
            handled = got
            await alice.send(f"<a xmlns='{SM}' h='{handled}'/>")
        alice.buffer = alice.buffer.rpartition("</message>")[2]


async def measure(node, backup, messages: int, acked: int) -> dict[str, float]:
    alice = await RawClient.connect(node)
    await alice.login("alice", "alice-pw", resource="phone")
    await alice.send(f"<enable xmlns='{SM}' resume='true'/>")
    await alice.expect(r"<enabled ")
    bob = await RawClient.connect(node)
    await bob.login("bob", "bob-pw", resource="desk")
    await asyncio.sleep(1.0)  # the replica's snapshot is out; the link is warm

    pid = node.process.pid
    cpu0, t0, backup_cpu0 = cpu_s(pid), time.perf_counter(), cpu_s(backup.process.pid)
    reader = asyncio.ensure_future(alice_reader(alice, messages))
    chunk = "".join(f"<message to='alice@example.test/phone' type='chat'><body>m{i}</body></message>"
                    for i in range(100))
    for _ in range(messages // 100):
        await bob.send(chunk)
    await asyncio.wait_for(reader, 120)
    push_s, push_cpu = time.perf_counter() - t0, cpu_s(pid) - cpu0
    backup_cpu = cpu_s(backup.process.pid) - backup_cpu0

    t0 = time.perf_counter()
    for i in range(acked):
        await alice.send(f"<message to='bob@example.test/desk' type='chat'><body>a{i}</body></message>"
                         f"<r xmlns='{SM}'/>")
        await alice.expect(rf"<a xmlns='{SM}' h='{i + 1}'/>")
    rtt_ms = (time.perf_counter() - t0) / acked * 1000
    alice.close()
    bob.close()
    return {"msg_per_s": messages / push_s, "cpu_us_per_msg": push_cpu / messages * 1e6,
            "backup_cpu_us_per_msg": backup_cpu / messages * 1e6, "acked_rtt_ms": rtt_ms}


def run(replication: bool, messages: int, acked: int) -> dict[str, float]:
    os.environ["PRESENCE_HA_SM_REPLICATION"] = "on" if replication else "off"
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/presence-ha.sqlite3"
        cluster = start_ha_pair(url, Path(tmp), users=USERS)
        try:
            return asyncio.run(measure(cluster.node("n1"), cluster.node("n2"), messages, acked))
        finally:
            cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--acked", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for round_ in range(args.rounds):
        for replication in (False, True):
            result = run(replication, args.messages, args.acked)
            print(f"round {round_ + 1} replication {'on ' if replication else 'off'}: "
                  + "  ".join(f"{k}={v:.2f}" for k, v in result.items()), flush=True)


if __name__ == "__main__":
    main()
