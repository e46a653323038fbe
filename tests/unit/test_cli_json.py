"""Every command that lists or shows something takes `--json` and documents its keys
in `--help` (issue #21); parameter values may be negative numbers (validated, not
taken for options)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from presence_ha.server.cli import main

LISTING = [
    ("node", "list"), ("group", "list"), ("user", "list"), ("param", "show"), ("service", "list"),
    ("ha", "status"), ("dbreplication", "status"), ("dbreplication", "runtimestate"), ("cluster", "show"),
    ("db", "revision"),
]


def documented_keys(help_text: str) -> set[str]:
    """The quoted key names of the `With --json:` paragraph."""
    shape = help_text.split("With --json:", 1)[1]
    return set(re.findall(r'"([a-z_]+)"', shape))


@pytest.mark.parametrize("command", LISTING, ids=" ".join)
def test_listing_commands_take_json_and_document_its_keys(command: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "--json" in result.output
    assert "With --json:" in result.output and len(documented_keys(result.output)) >= 2


def test_a_negative_parameter_value_is_validated_not_taken_for_an_option(tmp_path) -> None:
    result = CliRunner().invoke(main, ["param", "set", "presence_grace_s", "-5", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code != 0
    assert "No such option" not in result.output
    assert "run `presence-ha db upgrade`" in result.output  # it got as far as the database
    assert not (tmp_path / "d").exists(), "a refused command created the data directory"
