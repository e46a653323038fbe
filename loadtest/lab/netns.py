"""The lab's hosts: Linux network namespaces on one bridge, and the network faults.

Rules of this module:
- A lab is named by a small number `lab_id` (0-255). Everything it creates carries
  that name, so a later run (or `lab down`) finds leftovers by name alone, even after
  a `kill -9`: namespaces `phalab<ID>-<host>`, the bridge `phalab<ID>`, and one veth
  pair per host (`phalab<ID>-<host>` on the bridge, `eth0` inside the namespace).
- Addresses come only from the benchmarking range 198.18.0.0/15 (RFC 2544): the lab
  uses 198.18.<ID>.0/24, host number N gets .N, the root namespace .254 (so tests
  and users reach the hosts from outside) and the service address's virtual IP .100
  (held by one node host at a time: `loadtest.lab.vip`). The namespaces have no default route: they
  reach each other, the root namespace on the bridge, and their own loopback only.
- Every process of the lab runs inside one of its namespaces (`ns_argv`), so "every
  process of host H" is the set of processes in H's namespace (`pids_in`), found from
  /proc, and cleaning up means killing those and deleting the namespaces.
- Network faults are nftables drop rules inside the namespaces, in one table
  `inet phalab` per namespace; `heal` deletes the tables. Drops, not rejects: a cut
  link is silent, as a real one is.
- Callers need root; `require_root` and `missing_tools` say so in words.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LAB_RANGE = ipaddress.IPv4Network("198.18.0.0/15")
ROOT_HOST_NUMBER = 254
VIP_HOST_NUMBER = 100
NFT_TABLE = "phalab"
NS_DIR = "/run/netns"


class LabError(Exception):
    """The lab cannot be built or driven (missing tool, not root, a command failed)."""


@dataclass(frozen=True)
class Host:
    """One lab host: its short name, number on the subnet, namespace and address."""

    name: str
    number: int
    netns: str
    address: str
    veth: str


@dataclass(frozen=True)
class LabNet:
    """The names and addresses of lab `lab_id` with hosts `host_names` (numbered from 1)."""

    lab_id: int
    host_names: tuple[str, ...] = ("h1", "h2", "w")

    def __post_init__(self) -> None:
        if not 0 <= self.lab_id <= 255:
            raise LabError(f"lab id {self.lab_id} out of range 0-255")

    @property
    def prefix(self) -> str:
        return f"phalab{self.lab_id}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        subnet = ipaddress.IPv4Network(f"198.18.{self.lab_id}.0/24")
        assert subnet.subnet_of(LAB_RANGE)
        return subnet

    @property
    def bridge(self) -> str:
        return self.prefix

    @property
    def root_address(self) -> str:
        return str(self.subnet[ROOT_HOST_NUMBER])

    @property
    def vip(self) -> str:
        return str(self.subnet[VIP_HOST_NUMBER])

    @property
    def hosts(self) -> tuple[Host, ...]:
        return tuple(
            Host(name, number, f"{self.prefix}-{name}", str(self.subnet[number]), f"{self.prefix}-{name}")
            for number, name in enumerate(self.host_names, start=1)
        )

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise LabError(f"no host {name!r} in the lab (hosts: {', '.join(self.host_names)})")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("the lab needs root (network namespaces, veth pairs, a bridge, nftables): run it as root")


def find_program(command: str) -> str | None:
    """`command` on PATH, or in the sbin directories (not on every root shell's PATH)."""
    return shutil.which(command) or shutil.which(command, path="/usr/sbin:/sbin")


def program(command: str) -> str:
    found = find_program(command)
    if found is None:
        raise LabError(f"`{command}` is not installed")
    return found


def missing_tools(tools: Iterable[tuple[str, str]]) -> list[str]:
    """The Debian packages to install for the (command, package) pairs not found."""
    return sorted({package for command, package in tools if find_program(command) is None})


def sh(*argv: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a short command; a failure (when `check`) becomes a `LabError` with its stderr."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise LabError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()}")
    return done


def ns_argv(host: Host, argv: list[str]) -> list[str]:
    """`argv` run inside `host`'s namespace."""
    return ["ip", "netns", "exec", host.netns, *argv]


def create(net: LabNet) -> None:
    """The bridge with the root namespace's address, and each host on it."""
    sh("ip", "link", "add", net.bridge, "type", "bridge")
    sh("ip", "addr", "add", f"{net.root_address}/{net.subnet.prefixlen}", "dev", net.bridge)
    sh("ip", "link", "set", net.bridge, "up")
    for host in net.hosts:
        sh("ip", "netns", "add", host.netns)
        sh("ip", "-n", host.netns, "link", "set", "lo", "up")
        sh("ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        sh("ip", "link", "set", host.veth, "master", net.bridge, "up")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.address}/{net.subnet.prefixlen}", "dev", "eth0")
        sh("ip", "-n", host.netns, "link", "set", "eth0", "up")


def exists(net: LabNet) -> list[str]:
    """What is left of lab `net` on this machine: its namespaces and links, by name."""
    namespaces = set(os.listdir(NS_DIR)) if os.path.isdir(NS_DIR) else set()
    found = [h.netns for h in net.hosts if h.netns in namespaces]
    links = [net.bridge] + [h.veth for h in net.hosts]
    return found + [link for link in links if os.path.exists(f"/sys/class/net/{link}")]


def destroy(net: LabNet) -> None:
    """Kill every process in the lab's namespaces, then delete them and the bridge."""
    for host in net.hosts:
        kill_pids(pids_in(host), signal.SIGKILL)
    for host in net.hosts:
        if os.path.exists(f"{NS_DIR}/{host.netns}"):
            sh("ip", "netns", "del", host.netns, check=False)  # takes its veth pair along
        if os.path.exists(f"/sys/class/net/{host.veth}"):
            sh("ip", "link", "del", host.veth, check=False)
    if os.path.exists(f"/sys/class/net/{net.bridge}"):
        sh("ip", "link", "del", net.bridge, check=False)


def pids_in(host: Host, uid: int | None = None) -> list[int]:
    """PIDs of the processes in `host`'s namespace (only those of `uid` when given)."""
    try:
        target = os.stat(f"{NS_DIR}/{host.netns}")
    except OSError:
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
            owner = os.stat(f"/proc/{entry}").st_uid
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (target.st_dev, target.st_ino) and (uid is None or owner == uid):
            found.append(int(entry))
    return found


def cpu_seconds(host: Host) -> dict[str, float]:
    """CPU time (user + system, seconds) used so far by the processes in `host`, by command name."""
    ticks = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid in pids_in(host):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        used[command] = used.get(command, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def kill_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing to stop
            os.kill(pid, sig)


# --- network faults (nftables inside the namespaces) -----------------------------------

def _drop_rules(rules: list[str]) -> str:
    """An nft script (re)creating table `inet phalab` with `rules` in input and output."""
    body = "\n".join(f"  {rule}" for rule in rules)
    return (
        f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        " chain input { type filter hook input priority 0; policy accept;\n" + body.replace("DIR", "saddr") + "\n }\n"
        " chain output { type filter hook output priority 0; policy accept;\n" + body.replace("DIR", "daddr") + "\n }\n"
        "}\n"
    )


def partition_rules(peer_address: str) -> str:
    """Drop everything to and from `peer_address` (other traffic flows)."""
    return _drop_rules([f"ip DIR {peer_address} drop"])


def isolation_rules() -> str:
    """Drop everything through `eth0`: the host reaches only its own loopback."""
    return (
        f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        f"table inet {NFT_TABLE} {{\n"
        ' chain input { type filter hook input priority 0; policy accept; iifname "eth0" drop\n }\n'
        ' chain output { type filter hook output priority 0; policy accept; oifname "eth0" drop\n }\n'
        "}\n"
    )


def apply_rules(host: Host, script: str) -> None:
    sh(*ns_argv(host, ["nft", "-f", "-"]), stdin=script)


def cut(net: LabNet, a: str, b: str) -> None:
    """Cut the network between hosts `a` and `b` both ways; both still reach the others."""
    first, second = net.host(a), net.host(b)
    apply_rules(first, partition_rules(second.address))
    apply_rules(second, partition_rules(first.address))


def isolate(net: LabNet, name: str) -> None:
    """Cut host `name` off from every other host (and from the root namespace)."""
    apply_rules(net.host(name), isolation_rules())


def heal(net: LabNet) -> None:
    """Remove every fault rule from every host of the lab."""
    for host in net.hosts:
        script = f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
        if os.path.exists(f"{NS_DIR}/{host.netns}"):
            apply_rules(host, script)
