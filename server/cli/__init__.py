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

# Every top-level sub-command: its name and the (module, attribute) that define it, in
# --help order. A module is imported only when its command runs (or --help lists them
# all), so `presence-ha db upgrade` does not load the load tester and the XMPP client
# libraries. An attribute None: the module is imported for what it adds to the
# command before it (`run` adds `node run` and `node metrics`).
SUBCOMMANDS: list[tuple[str, list[tuple[str, str | None]]]] = [
    ("db", [("presence_ha.server.cli.provision", "db_group")]),
    ("cluster", [("presence_ha.server.cli.provision", "cluster_group")]),
    ("node", [("presence_ha.server.cli.provision", "node_group"), ("presence_ha.server.cli.run", None)]),
    ("group", [("presence_ha.server.cli.provision", "group_group")]),
    ("user", [("presence_ha.server.cli.users", "user_group")]),
    ("param", [("presence_ha.server.cli.params", "param_group")]),
    ("dbreplication", [("presence_ha.server.cli.dbreplication", "dbreplication_group")]),
    ("up", [("presence_ha.server.cli.run", "up_command")]),
    ("ha", [("presence_ha.server.cli.ha", "ha_group")]),
    ("service", [("presence_ha.server.cli.ha", "service_group")]),
    ("client", [("presence_ha.client.cli", "client_command")]),  # SPEC §8 dual-connection client
    ("loadtest", [("presence_ha.loadtest.compare", "loadtest_group")]),  # bench, bench-prosody, ...
    ("lab", [("presence_ha.loadtest.lab.cli", "lab_group")]),  # separate hosts in network namespaces
]


class LazyGroup(click.Group):
    """A group whose sub-commands are imported when first asked for (`SUBCOMMANDS`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, _where in SUBCOMMANDS]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = dict(SUBCOMMANDS).get(cmd_name)
        if where is None:
            return None
        command = None
        for module, attr in where:
            loaded = importlib.import_module(module)
            if attr is not None:
                command = getattr(loaded, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
