"""Parameter commands: SRM service parameters (SPEC §5) and enterprise parameters (§2).

Rules of this module:
- `param show` lists every parameter with its effective value and its source
  (default, cluster, node); `--enterprise` / `--service` narrow the list.
- `param set KEY VALUE [--node N]` validates through `db.parameters` (errors name the
  key); `param reset` returns to the inherited value.
- Changing `user_assignment_mode` re-runs the Sync Agent at once (SPEC §2), unless a
  node is failed over: then users stay where they are and the command says so.
"""

from __future__ import annotations

import click

from presence_ha.db import assignments, parameters
from presence_ha.db.errors import FailoverInProgress
from presence_ha.server.cli.common import db_options
from presence_ha.server.cli.database import echo_json, echo_table, json_help, json_option, open_session, run

MODE_KEY = "user_assignment_mode"


@click.group("param")
def param_group() -> None:
    """Show and set service (SRM) and enterprise parameters."""


PARAM_JSON = """{"parameters": [{"name", "kind": "service"|"enterprise", "scope": "cluster"|"node",
  "value", "default", "source": "default"|"cluster"|"node", "description"}]}
  (value and default: JSON numbers, booleans or text, as the parameter's type)"""


@param_group.command("show", epilog=json_help(PARAM_JSON))
@click.option("--node", "node_name", help="Effective values for this node (per-node parameters).")
@click.option("--enterprise", "kind", flag_value="enterprise", help="Only enterprise parameters.")
@click.option("--service", "kind", flag_value="service", help="Only service (SRM) parameters.")
@json_option
@db_options
def param_show(db_url: str, node_name: str | None, kind: str | None, as_json: bool) -> None:
    """List parameters: name, kind, scope, value, default, source, description."""

    async def go() -> list[parameters.ParameterValue]:
        async with open_session(db_url) as session:
            return await parameters.show_parameters(session, node_name)

    listed = [p for p in run(go()) if kind is None or p.kind.value == kind]
    if as_json:
        echo_json({"parameters": [{"name": p.name, "kind": p.kind.value, "scope": p.scope.value, "value": p.value,
                                   "default": p.default, "source": p.source, "description": p.help}
                                  for p in listed]})
        return
    rows = [
        (p.name, p.kind.value, p.scope.value, parameters.REGISTRY[p.name].render(p.value),
         parameters.REGISTRY[p.name].render(p.default), p.source, p.help)
        for p in listed
    ]
    echo_table(("parameter", "kind", "scope", "value", "default", "source", "description"), rows)


async def _after_mode_change(session) -> str:
    try:
        return f"; {await assignments.rebalance(session)} user(s) moved"
    except FailoverInProgress as exc:
        return f"; users not rebalanced: {exc}"


# A VALUE may be negative: `-5` is a value to validate, not an unknown option.
@param_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.option("--node", "node_name", help="Set for this node only (per-node parameters).")
@db_options
def param_set(db_url: str, key: str, value: str, node_name: str | None) -> None:
    """Set parameter KEY to VALUE for the cluster, or for one node with --node."""

    async def go() -> tuple[parameters.ParameterValue, str]:
        async with open_session(db_url) as session:
            result = await parameters.set_parameter(session, key, value, node_name)
            note = await _after_mode_change(session) if key == MODE_KEY else ""
            return result, note

    result, note = run(go())
    where = f"node {node_name}" if node_name else "cluster"
    click.echo(f"{result.name} = {parameters.REGISTRY[key].render(result.value)} ({where}){note}")


@param_group.command("reset")
@click.argument("key")
@click.option("--node", "node_name", help="Reset this node's value only.")
@db_options
def param_reset(db_url: str, key: str, node_name: str | None) -> None:
    """Remove KEY's stored value so the cluster value or the default applies."""

    async def go() -> str:
        async with open_session(db_url) as session:
            await parameters.reset_parameter(session, key, node_name)
            return await _after_mode_change(session) if key == MODE_KEY else ""

    note = run(go())
    click.echo(f"{key} reset{' on node ' + node_name if node_name else ''}{note}")
