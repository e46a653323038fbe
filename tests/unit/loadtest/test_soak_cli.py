"""`presence-ha loadtest soak` refuses what it cannot do before starting anything."""

from __future__ import annotations

from click.testing import CliRunner

from presence_ha.loadtest.soak import soak_command


def run(*args: str):
    return CliRunner().invoke(soak_command, list(args))


def test_lab_topology_is_refused_with_the_way_to_run_its_faults() -> None:
    result = run("--topology", "lab")
    assert result.exit_code == 2
    assert "not supported by the soak yet" in result.output and "--topology lab --fault" in result.output


def test_unknown_fault_kinds_and_bad_intervals_are_refused() -> None:
    result = run("--faults", "kill,partition")
    assert result.exit_code == 2 and "choose among kill, term, stop, service, manual" in result.output
    result = run("--interval", "60,30")
    assert result.exit_code == 2 and "0 < LOWER <= UPPER" in result.output


def test_help_names_the_invariants() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("lost_acked", "double_served", "recovery", "rss", "--dwell", "--recovery-bound"):
        assert name in result.output
