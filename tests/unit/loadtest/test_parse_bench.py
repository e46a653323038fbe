"""The parser micro-benchmark runs and prints every scenario (its figures are not checked:
benchmarks print numbers, tests do not time)."""

from __future__ import annotations

from presence_ha.loadtest import parse_bench


def test_every_scenario_prints_a_figure_for_both_versions(capsys):
    compared = parse_bench.current.__file__  # another copy of the module, loaded from its file
    parse_bench.main(["--stanzas", "20", "--rounds", "1", "--compare", compared])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == list(parse_bench.scenarios(20))
    assert all("current median" in line and "compared median" in line and "current/compared" in line
               for line in lines)


def test_the_current_parser_refuses_the_endless_tags_it_is_fed():
    parser = parse_bench._parser(parse_bench.current)
    parser.feed(parse_bench.HEADER + b"<message a='" + b"x>" * 10_000)
    assert parser.dead
