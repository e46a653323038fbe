"""`presence-ha loadtest failover --topology lab`: the lab's faults, the database's promotion
time, and the way back to Normal after a network fault (issue #17 part 6).

Rules of this module:
- `LabRun.build()` brings up a fresh lab (`Lab.up`) for one run, with the run's users
  and re-login limits, and (fault `wan`) the delaying proxy between h1 and h2 from the
  start; `stop()` takes it down. The load generator stays in the root namespace and
  dials the nodes' lab addresses over the bridge.
- The faults (`LAB_FAULTS`), on the host of the faulted node (`--node`, default n1):
  * host: the host powers off: SIGKILL of every process in it (node, Patroni,
    PostgreSQL). The lab host's kernel lives on, so the peers' connections see resets
    as after a crash; a silent host is the `isolate` fault.
  * db: the database primary alone dies (SIGKILL of Patroni and PostgreSQL on
    whichever host holds it; `--node` is ignored, the report names the node on that host).
  * partition: h1 and h2 cut from each other both ways (nftables drops); each still
    reaches the witness and the load generator.
  * isolate: the node's host cut off from everything (the witness, the peer, the clients).
  * (`--lab-dir D`: use the running lab of `presence-ha lab up --data-dir D` instead,
    and leave it running; not with `wan`, which must be in place before anything connects.)
  * (`--db-primary`: the database primary is first moved, by a Patroni switchover, to
    the faulted node's host (`fault-host`, the default: a host fault then also costs
    a promotion) or to the other (`other-host`); `any` leaves it where it started.)
  * wan: 80 ms round trip and 1% loss between h1 and h2 for the whole run
    (`loadtest.lab.wanproxy`), then SIGKILL of the node.
- The promotion time: a thread polls Patroni's leader and commits a tiny write
  (`SELECT txid_current()`: a commit record, so it waits for the synchronous standby)
  through the nodes' multi-host URL. promotion_ms: from the fault to the first commit
  on a new primary (None when the primary did not change); db_write_resumed_ms: from
  the fault to the first commit anywhere (a primary that lost its synchronous standby
  holds commits until Patroni drops it).
- After a network fault the network is healed while the load still runs (`heal_s`),
  so a node that comes back meets clients that moved. Once the load has stopped the
  pair's live states (`ha status` inside each host) name a row of SPEC §6
  (`spec_row`), and the admin action documented for that row is performed (`ha
  fallback` inside the failed-over node's host; `ha recover` inside each host, where
  each node's admin RPC listens) until the pair is Normal / Normal again.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from presence_ha.loadtest.faults import Injected
from presence_ha.loadtest.lab.lab import NODE_HOSTS, Lab
from presence_ha.loadtest.lab.netns import LabError
from presence_ha.loadtest.lab.postgres import leader_name, wait_replicated
from presence_ha.loadtest.lab.wanproxy import WanModel
from presence_ha.loadtest.scenario import Ledger, summary_ms

LAB_FAULTS = ("host", "db", "partition", "isolate", "wan")
NETWORK_FAULTS = ("partition", "isolate")
LAB_BASE_PORT = 15222
WATCH_DEADLINE_S = 90.0
NORMAL = ("Normal", "Normal")
FAILED_OVER = ("Failed Over", "Failed Over with Critical Services Not Running", "Idle")
# (state of the node that failed, its reason or the backup's) -> SPEC §6 row
BACKUP_ROWS = {"On Admin Request": 3, "Critical Services Down": 12, "Database Failure": 13, "Peer Down": 16,
               "Peer Reboot": 17, "Peer Down During Initialization": 18, "Initialization": 11}
FAILED_MODE_ROWS = {"Critical Service Start Failed": 14, "Critical Services Down": 15,
                    "Take Over Users Failed": 19, "Take Back Users Failed": 20, "Unknown": 21}


def refusal(fault: str, topology: str) -> str | None:
    """Why `fault` cannot run on `topology`, or None."""
    if topology != "lab" and fault in ("host", "isolate", "wan"):
        return f"{fault} needs separate hosts: use --topology lab (root; see `presence-ha lab --help`)"
    if topology == "lab" and fault not in (*LAB_FAULTS, "kill"):
        return f"--topology lab runs the faults {', '.join((*LAB_FAULTS, 'kill'))}, not {fault}"
    return None


def spec_row(states: dict[str, tuple[str, str] | None]) -> tuple[int | None, str | None, str | None]:
    """(SPEC §6 row, admin action, node it applies to) for the live states of a pair.

    Actions: None (row 1, or an automatic row: wait), "fallback" (to the failed-over node),
    "recover" (the group). Row None: the states match no row (or a node does not answer).
    """
    (a, sa), (b, sb) = sorted(states.items())
    if sa == NORMAL and sb == NORMAL:
        return 1, None, None
    for failed, fs, _backup, bs in ((a, sa, b, sb), (b, sb, a, sa)):
        if bs is not None and bs[0] == "Running in Backup Mode" and (fs is None or fs[0] in FAILED_OVER):
            reason = bs[1] if bs[1] in ("Peer Down", "Peer Reboot", "Peer Down During Initialization") else (
                fs[1] if fs is not None else "Peer Down")
            return BACKUP_ROWS.get(reason), "fallback", failed
        if bs is not None and bs[0] == "Backup Activated":
            return (22 if "Database" in bs[1] else 23), None, None
    if any(s is not None and s[0] == "Running in Failed Mode" for s in (sa, sb)):
        reason = next(s[1] for s in (sa, sb) if s is not None and s[0] == "Running in Failed Mode")
        return FAILED_MODE_ROWS.get(reason, 21), "recover", None
    if sa is not None and sb is not None and sa[0] == sb[0] == "Unknown":
        return 24, "recover", None
    return None, None, None


def moved_users(ledger: Ledger, fault_at: float) -> list[str]:
    """Users served after the fault by a node other than the one serving them at it."""
    moved = []
    for user, events in ledger.served.items():
        before = ledger.node_at(user, fault_at)
        if before is not None and any(e.at > fault_at and e.node != before for e in events):
            moved.append(user)
    return sorted(moved)


@dataclass
class DbWatch:
    """Polls Patroni's leader and a committed write from the fault on (see the module rules)."""

    lab: Lab
    leader_before: str | None
    fault_at: float
    leader: str | None = None
    leader_at: float | None = None
    commit_at: float | None = None
    commit_address: str | None = None
    promoted_at: float | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> DbWatch:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True, name="dbwatch")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    async def _main(self) -> None:
        from presence_ha.db.engine import make_engine

        addresses = {h.address: h.name for h in self.lab.db_hosts}
        deadline = self.fault_at + WATCH_DEADLINE_S
        while not self._stop.is_set() and time.monotonic() < deadline and self.promoted_at is None:
            leader = await asyncio.to_thread(lambda: leader_name(_view(self.lab)))
            if leader and leader != self.leader_before and self.leader_at is None:
                self.leader, self.leader_at = leader, time.monotonic()
            engine = make_engine(self.lab.db_url, pool_size=1)
            try:
                async with asyncio.timeout(2.0), engine.connect() as conn:
                    result = await conn.exec_driver_sql(
                        "SELECT host(inet_server_addr()), pg_is_in_recovery(), txid_current()")
                    address, in_recovery, _xid = tuple(result.one())
                    await conn.commit()
                if not in_recovery:
                    now = time.monotonic()
                    if self.commit_at is None:
                        self.commit_at, self.commit_address = now, str(address)
                    if addresses.get(str(address)) != self.leader_before:
                        self.promoted_at = now
                        self.leader = self.leader or addresses.get(str(address))
                    elif self.leader_before is not None and self._primary_survives():
                        break  # the old primary still writes: no promotion to wait for
            except Exception:  # noqa: BLE001 -- any failure is "not writable yet"; polled again
                pass
            finally:
                await engine.dispose()
            await asyncio.sleep(0.1)

    def settled(self) -> bool:
        """The database writes again (on a new primary, or the old one survived), or the watch gave up."""
        return self._thread is None or not self._thread.is_alive()

    def _primary_survives(self) -> bool:
        return self.commit_at is not None

    def figures(self) -> dict:
        def ms(at: float | None) -> float | None:
            return None if at is None else round((at - self.fault_at) * 1000, 1)

        return {"db_leader_before": self.leader_before, "db_leader_after": self.leader or self.leader_before,
                "promotion_ms": ms(self.promoted_at), "db_write_resumed_ms": ms(self.commit_at),
                "patroni_leader_ms": ms(self.leader_at)}


def _view(lab: Lab) -> list[dict]:
    from presence_ha.loadtest.lab.postgres import cluster_view

    return cluster_view(lab.db_hosts, timeout_s=0.5)


@dataclass
class LabRun:
    """One run's lab: built fresh, faulted, healed, brought back to Normal, taken down."""

    lab: Lab
    data: dict
    fault: str
    own_dir: bool
    own_lab: bool = True  # False: --lab-dir, a lab someone else brought up (left running)
    watch: DbWatch | None = None
    log: list[str] = field(default_factory=list)
    heal_s: float = 12.0
    after_heal: dict = field(default_factory=dict)

    @classmethod
    def build(cls, opts: dict, mode: str, say=print) -> LabRun:
        if opts.get("lab_dir"):
            return cls.existing(opts, say)
        own = not opts["data_dir"]
        base = Path(opts["data_dir"] or tempfile.mkdtemp(prefix="failover-lab-", dir="/var/tmp"))
        base.chmod(0o755)  # the postgres user must reach the host directories below
        lab = Lab.create(base / mode, opts["lab_id"])
        lower, upper = opts["relogin"]
        wan = WanModel() if opts["fault"] == "wan" else None
        fault_host = NODE_HOSTS[opts["node"] or "n1"]
        other = next(h for h in NODE_HOSTS.values() if h != fault_host)
        wanted = {"fault-host": fault_host, "other-host": other}.get(opts["db_primary"])
        started = time.monotonic()
        data = lab.up(opts["users"], LAB_BASE_PORT, "loadtest.test",
                      params={"relogin_lower_s": lower, "relogin_upper_s": upper,
                              # both nodes start at once; on a busy machine (or across the WAN) one
                              # may take longer than the lab's 9 s to greet the other (row 18)
                              "init_heartbeat_timeout_s": 30}, wan=wan, db_primary=wanted)
        # Where the database primary is matters: `--db-primary fault-host` (default) puts it on
        # the faulted node's host (a host fault then also costs a promotion), `other-host` away.
        run = cls(lab, data, opts["fault"], own)
        say(f"lab {lab.net.lab_id} up in {time.monotonic() - started:.0f}s in {lab.data_dir} "
            f"(database primary {lab.db_leader()}{'; WAN: ' + wan.describe() if wan else ''})")
        return run

    @classmethod
    def existing(cls, opts: dict, say=print) -> LabRun:
        """The lab `presence-ha lab up` (or a test) runs in `--lab-dir`: used, not taken down."""
        directory = Path(opts["lab_dir"])
        lab = Lab.load(directory)
        try:
            data = json.loads((directory / "cluster.json").read_text())
        except (OSError, ValueError) as exc:
            raise LabError(f"no lab in {directory} (run `presence-ha lab up --data-dir {directory}`): {exc}") from exc
        if lab is None or lab.db_leader() is None:
            raise LabError(f"the lab in {directory} does not run (no database leader answers)")
        run = cls(lab, data, opts["fault"], own_dir=False, own_lab=False)
        fault_host = NODE_HOSTS[opts["node"] or "n1"]
        other = next(h for h in NODE_HOSTS.values() if h != fault_host)
        wanted = {"fault-host": fault_host, "other-host": other}.get(opts["db_primary"])
        if wanted is not None:
            lab.move_db_primary(wanted)
        say(f"lab {lab.net.lab_id} in {directory} (database primary {lab.db_leader()})")
        return run

    @property
    def passwords(self) -> dict[str, str]:
        return {u["username"]: u["password"] for u in self.data["users"]}

    def pids(self) -> dict[str, int | None]:
        return {name: self.lab.node_pid(name) for name in NODE_HOSTS}

    def inject(self, node: str) -> Injected:
        """Inject the run's fault now (see the module rules); the DB watch starts with it."""
        lab, host = self.lab, NODE_HOSTS[node]
        leader = lab.db_leader()
        pid = lab.node_pid(node)
        where = f"database primary {leader}"
        fault_at = time.monotonic()
        if self.fault == "host":
            lab.power_off(host)
            detail = (f"{host} powered off (SIGKILL of node {node}, Patroni, PostgreSQL, HAProxy and keepalived; "
                      f"{where})")
        elif self.fault == "db":
            killed = lab.kill_db_primary()
            node = next(n for n, h in NODE_HOSTS.items() if h == killed)
            detail = f"database primary on {killed} killed (SIGKILL of Patroni and PostgreSQL; node {node} lives)"
        elif self.fault == "partition":
            lab.partition("h1", "h2")
            detail = f"h1 and h2 cut from each other both ways, both reach the witness ({where})"
        elif self.fault == "isolate":
            lab.isolate(host)
            detail = f"{host} (node {node}) cut off from every host and the clients ({where})"
        elif self.fault in ("wan", "kill"):
            if pid is None:
                raise LabError(f"node {node} is not running")
            os.kill(pid, signal.SIGKILL)
            detail = f"SIGKILL sent to {node} (pid {pid}) in {host}; {where}"
        else:
            raise LabError(f"fault {self.fault!r} is not a lab fault")
        self.watch = DbWatch(lab, leader, fault_at).start()
        return Injected(self.fault, node, detail, pid)

    def after_fault(self, poll, settle_s: float = 2.0) -> None:
        """With the load running on: wait until the database writes again (a promotion can
        outlast the users' recovery), plus `settle_s`; then heal a network fault and keep
        the load on `heal_s` more."""
        if self.watch is not None:
            while not self.watch.settled():
                poll(0.2)
            waited = time.monotonic()
            while time.monotonic() - waited < settle_s:
                poll(0.2)
        if self.fault not in NETWORK_FAULTS:
            return
        self.lab.heal()
        healed = time.monotonic()
        self.log.append("network healed (nftables rules removed) with the load still running")
        while time.monotonic() - healed < self.heal_s:
            poll(0.2)

    def finish(self) -> dict:
        """After the load: the pair's row of SPEC §6 and the admin actions back to Normal."""
        if self.watch is not None:
            self.watch.stop()
        if self.fault == "db" and not self.own_lab and self.watch is not None and self.watch.leader_before:
            # A lab that lives on gets its killed database back, as a standby (pg_rewind).
            self.lab.restart_db(self.watch.leader_before)
            wait_replicated(self.lab.db_hosts, 90.0)
            self.log.append(f"database on {self.watch.leader_before} restarted: a synchronous standby again")
        if self.fault not in NETWORK_FAULTS:
            return {"after": {"states": self.lab.live_states(), "stored_states": self._stored_states()}}
        return {"after": self.back_to_normal()}

    def back_to_normal(self, deadline_s: float = 90.0) -> dict:
        states = self._settled_states()
        first_row, action, target = spec_row(states)
        out: dict = {"states_after_heal": states, "spec_row": first_row, "actions": []}
        started = time.monotonic()
        while states != dict.fromkeys(NODE_HOSTS, NORMAL) and time.monotonic() - started < deadline_s:
            row, action, target = spec_row(states)
            if action == "fallback" and target is not None:
                done = self.lab.presence_ha(NODE_HOSTS[target], "ha", "fallback", target)
                out["actions"].append({"row": row, "action": f"ha fallback {target}", "rc": done.returncode,
                                       "output": (done.stdout + done.stderr).strip()[-300:]})
            elif action == "recover":
                for host in sorted(set(NODE_HOSTS.values())):
                    done = self.lab.presence_ha(host, "ha", "recover", "g1", "--yes")
                    out["actions"].append({"row": row, "action": f"ha recover g1 (in {host})",
                                           "rc": done.returncode, "output": (done.stdout + done.stderr).strip()[-300:]})
            time.sleep(3.0)
            states = self._settled_states()
        out["states_final"] = states
        out["normal"] = states == dict.fromkeys(NODE_HOSTS, NORMAL)
        out["back_to_normal_s"] = round(time.monotonic() - started, 1)
        return out

    def _stored_states(self) -> dict[str, tuple[str, str] | None]:
        from presence_ha.loadtest.localpair import ha_states

        try:
            return asyncio.run(ha_states(self.lab.db_url, list(NODE_HOSTS)))
        except Exception as exc:  # noqa: BLE001 -- a figure of the report, not a reason to lose the run
            return {"error": str(exc)}  # type: ignore[dict-item]

    def _states(self) -> dict[str, tuple[str, str] | None]:
        """Live states; a node whose admin RPC does not answer (busy) by its stored state."""
        live = self.lab.live_states()
        if all(s is not None for s in live.values()):
            return live
        stored = self._stored_states()
        return {n: s if s is not None else stored.get(n) for n, s in live.items()}

    def _settled_states(self, deadline_s: float = 30.0) -> dict[str, tuple[str, str] | None]:
        """States once two reads 1 s apart agree (transient states pass), or the last read."""
        deadline = time.monotonic() + deadline_s
        last = self._states()
        while time.monotonic() < deadline:
            time.sleep(1.0)
            now = self._states()
            if now == last and all(s is not None for s in now.values()):
                return now
            last = now
        return last

    def figures(self, ledger: Ledger, fault_at: float) -> dict:
        """The lab's additions to a run's report: promotion, every user's downtime, moves."""
        every = sorted(ledger.served)
        downtimes, _ = ledger.downtimes(every, fault_at)
        moved = moved_users(ledger, fault_at)
        out = {"topology": "lab", "downtime_all_users_ms": summary_ms(downtimes),
               "not_recovered_all_users": sum(1 for d in downtimes if math.isinf(d)),
               "moved_users": len(moved), "moved_users_sample": moved[:20], "lab_log": self.log}
        if self.watch is not None:
            out.update(self.watch.figures())
        return out

    def stop(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        if not self.own_lab:
            return
        self.lab.down()
        if self.own_dir and not os.environ.get("PRESENCE_HA_KEEP_LAB"):
            shutil.rmtree(self.lab.data_dir.parent, ignore_errors=True)
