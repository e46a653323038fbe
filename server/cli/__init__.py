"""The `presence-ha` command: one group, with sub-commands contributed by each area.

Each area module exposes click commands/groups; this module only assembles them, so
`presence-ha --help` lists everything. Every command runs with umask 077: whatever
presence-ha creates (SQLite files, logs, keys, cluster.json, data directories) is
readable by its owner only; what is meant to be shared (a CA certificate) is given
its mode explicitly.
"""

from __future__ import annotations

import importlib
import logging
import os

import click

# (module, attribute) of every top-level sub-command, in --help order.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("presence_ha.server.cli.provision", "db_group"),
    ("presence_ha.server.cli.provision", "cluster_group"),
    ("presence_ha.server.cli.provision", "node_group"),
    ("presence_ha.server.cli.provision", "group_group"),
    ("presence_ha.server.cli.users", "user_group"),
    ("presence_ha.server.cli.params", "param_group"),
    ("presence_ha.server.cli.dbreplication", "dbreplication_group"),
    ("presence_ha.server.cli.run", "up_command"),  # also adds `node run` and `node metrics`
    ("presence_ha.server.cli.ha", "ha_group"),
    ("presence_ha.server.cli.ha", "service_group"),
    ("presence_ha.client.cli", "client_command"),  # SPEC §8 dual-connection client
    ("presence_ha.loadtest.compare", "loadtest_group"),  # bench, bench-prosody, bench-compare
    ("presence_ha.loadtest.lab.cli", "lab_group"),  # separate hosts in network namespaces (issue #17)
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="presence-ha")
def main(verbose: int) -> None:
    """presence-ha: highly available XMPP presence servers.

    Provision a cluster (cluster, node, group, user, param), run nodes (node run, up),
    operate high availability (ha, service, dbreplication) and measure it (loadtest).
    """
    os.umask(0o077)
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


for _module, _attr in SUBCOMMANDS:
    main.add_command(getattr(importlib.import_module(_module), _attr))
