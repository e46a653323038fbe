"""The lab's service address: a keepalived virtual IP in front of one HAProxy per node host.

Rules of this module:
- Built from what operators already run: in each node host (h1, h2) one HAProxy with
  `presence-ha up`'s configuration (`server.cli.haproxy`: both nodes as checked
  servers) and one keepalived holding a VRRP virtual address, `LabNet.vip`
  (198.18.ID.100), on the host's `eth0`. Clients dial VIP:5222 and reach the HAProxy
  of whichever host holds it; HAProxy binds the VIP without holding it
  (`net.ipv4.ip_nonlocal_bind=1` in the host), so a takeover needs no restart.
- VRRP over unicast between the two hosts' own addresses (no multicast group on the
  bridge), `advert_int` 1 s: a holder that stops advertising loses the address after
  three missed adverts plus a skew of (256 - priority) / 256 s. Both start BACKUP with
  `nopreempt`: h1 (higher priority) takes the address first, and a host that comes
  back does not take it back (a move resets every connection through the address).
- The track script asks the local HAProxy's monitor (HTTP on the host's loopback,
  `server.cli.haproxy.monitor_section`): 200 while HAProxy sees a node UP. Two failed
  checks (`CHECK_FALL`) put the instance in FAULT, so the address leaves a host whose
  HAProxy is dead, hung, or sees no node. A dead node alone does not move it: that
  host's HAProxy leads to the other node.
- One keepalived per host, inside the host's namespace: its configuration, check
  script and three pid files live in DIR/<host>/ (keepalived's default
  /run/keepalived.pid would be shared by every namespace on the machine); `-n`: it
  stays in the foreground as a child of the lab, `-l -D -G`: it logs to its stdout
  (DIR/<host>/keepalived.log), `-P`: VRRP only (no LVS checker process), `-u 0077`:
  its files are 0600 like the lab's others.
- The text (`keepalived_config`, `check_script`) is built by pure functions that the
  unit tests read; `holders` reads the kernel's addresses, not keepalived's opinion.
"""

from __future__ import annotations

import time
from pathlib import Path

from presence_ha.loadtest.lab import netns
from presence_ha.loadtest.lab.netns import Host, LabError, LabNet
from presence_ha.server.cli.haproxy import MONITOR_URI

SERVICE_PORT = 5222  # the XMPP client port (RFC 6120) on the virtual address
MONITOR_PORT = 8404  # HAProxy's monitor on each host's loopback (its usual stats port)
ADVERT_INT_S = 1
CHECK_INTERVAL_S = 1
CHECK_FALL = 2
CHECK_RISE = 2
PRIORITIES = {"h1": 150, "h2": 100}
CONFIG_FILE = "keepalived.conf"
SCRIPT_FILE = "check-haproxy.sh"

def check_script(port: int = MONITOR_PORT) -> str:
    """The track script: exit 0 iff HAProxy's monitor on 127.0.0.1:`port` answers 200.

    keepalived runs it as root every CHECK_INTERVAL_S: bash's /dev/tcp, no curl and no
    Python to start each second. A hung HAProxy accepts (the kernel does) but never
    answers: `read -t` gives up and the check fails.
    """
    return f"""#!/bin/bash
# keepalived's check of this host's HAProxy: 200 from its monitor while it sees a node UP.
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 1
printf 'GET {MONITOR_URI} HTTP/1.0\\r\\n\\r\\n' >&3
read -r -t 1 status <&3 || exit 1
[[ $status =~ ^HTTP/1\\.[01]\\ 200 ]]
"""


def monitor_address() -> str:
    return f"127.0.0.1:{MONITOR_PORT}"


def router_id(net: LabNet) -> int:
    """The VRRP router id (1-255): one per lab, so labs never answer each other's adverts."""
    return net.lab_id % 255 + 1


def keepalived_config(net: LabNet, host: Host, peer: Host, script: Path) -> str:
    """keepalived.conf of `host`: one VRRP instance with unicast adverts to `peer`,
    holding the lab's VIP while `script` (the HAProxy check) passes."""
    return f"""# Written by `presence-ha lab up`: the service address {net.vip}:{SERVICE_PORT} ({host.name}).
global_defs {{
    router_id {host.netns}
    script_user root
    enable_script_security
    max_auto_priority
}}

vrrp_script haproxy_alive {{
    script "{script}"
    interval {CHECK_INTERVAL_S}
    timeout 2
    fall {CHECK_FALL}
    rise {CHECK_RISE}
}}

vrrp_instance service {{
    state BACKUP
    nopreempt
    interface eth0
    virtual_router_id {router_id(net)}
    priority {PRIORITIES[host.name]}
    advert_int {ADVERT_INT_S}
    unicast_src_ip {host.address}
    unicast_peer {{
        {peer.address}
    }}
    virtual_ipaddress {{
        {net.vip}/{net.subnet.prefixlen} dev eth0
    }}
    track_script {{
        haproxy_alive
    }}
}}
"""


def keepalived_argv(binary: str, directory: Path) -> list[str]:
    """keepalived in the foreground with its files in `directory` (one per host)."""
    return [binary, "-n", "-l", "-D", "-G", "-P", "-u", "0077", "-f", str(directory / CONFIG_FILE),
            "-p", str(directory / "keepalived.pid"), "-r", str(directory / "keepalived-vrrp.pid"),
            "-c", str(directory / "keepalived-checkers.pid")]


def write_files(net: LabNet, host: Host, peer: Host, directory: Path) -> None:
    """The check script (0700: keepalived's script security wants it root's alone) and the config."""
    script = directory / SCRIPT_FILE
    script.write_text(check_script())
    script.chmod(0o700)
    (directory / CONFIG_FILE).write_text(keepalived_config(net, host, peer, script))


def allow_nonlocal_bind(host: Host) -> None:
    """Let `host`'s processes bind addresses it does not hold (yet): HAProxy on the VIP."""
    netns.sh(*netns.ns_argv(host, ["sysctl", "-q", "-w", "net.ipv4.ip_nonlocal_bind=1"]))


def holders(net: LabNet, names: tuple[str, ...]) -> list[str]:
    """The hosts among `names` whose eth0 carries the VIP now (normally exactly one)."""
    found = []
    for name in names:
        host = net.host(name)
        done = netns.sh("ip", "-n", host.netns, "-4", "-o", "addr", "show", "dev", "eth0", check=False)
        if f" {net.vip}/" in done.stdout:
            found.append(name)
    return found


def wait_holder(net: LabNet, names: tuple[str, ...], deadline_s: float, exclude: str | None = None) -> str:
    """The one host of `names` (other than `exclude`) that holds the VIP, once one does."""
    deadline = time.monotonic() + deadline_s
    while True:
        found = [name for name in holders(net, names) if name != exclude]
        if len(found) == 1:
            return found[0]
        if time.monotonic() > deadline:
            raise LabError(f"no single host holds the service address {net.vip} after {deadline_s:.0f}s "
                           f"(holders: {found or 'none'}); see DIR/h*/keepalived.log")
        time.sleep(0.05)


def drop_vip(net: LabNet, name: str) -> None:
    """Remove the VIP from host `name`'s eth0 (what its keepalived would do on a clean stop)."""
    netns.sh("ip", "-n", net.host(name).netns, "addr", "del", f"{net.vip}/{net.subnet.prefixlen}", "dev", "eth0",
             check=False)
