"""Statistics, schedules and sharding of loadtest.bench."""

import math

import pytest

from presence_ha.loadtest.bench import (
    Settings,
    Target,
    failure_summary,
    groups_of,
    marker,
    parse_marker,
    percentile,
    schedule,
    shard,
    summarize_ms,
)


@pytest.mark.parametrize(("q", "expected"), [(0, 1), (50, 50), (99, 99), (99.9, 100), (100, 100)])
def test_percentile_is_nearest_rank(q, expected):
    values = list(range(100, 0, -1))  # unsorted on purpose
    assert percentile(values, q) == expected


def test_percentile_of_nothing_is_nan():
    assert math.isnan(percentile([], 50))


def test_summarize_reports_milliseconds():
    summary = summarize_ms([0.001, 0.002, 0.003, 0.010])
    assert summary == {"count": 4, "p50_ms": 2.0, "p99_ms": 10.0, "mean_ms": 4.0, "max_ms": 10.0}


def test_summarize_empty_keeps_every_field():
    summary = summarize_ms([])
    assert summary["count"] == 0
    assert set(summary) == {"count", "p50_ms", "p99_ms", "mean_ms", "max_ms"}


def test_schedule_is_evenly_spaced_at_the_rate():
    assert schedule(5, 500.0) == pytest.approx([0.0, 0.002, 0.004, 0.006, 0.008])
    assert schedule(0, 10.0) == []


def test_shard_round_robin_covers_everything_once():
    parts = shard(range(7), 3)
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(x for p in parts for x in p) == list(range(7))


def test_shard_with_more_workers_than_items_leaves_empty_parts():
    assert shard([1], 3) == [[1], [], []]


def test_login_offsets_follow_the_shards():
    # bench_login gives worker w users w::W and offsets w::W of one global schedule
    offsets = schedule(6, 2.0)
    assert [offsets[w::2] for w in range(2)] == [[0.0, 1.0, 2.0], [0.5, 1.5, 2.5]]


def test_groups_of_drop_the_remainder():
    assert groups_of(10, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert groups_of(2, 3) == []
    assert len(groups_of(210, 21)) == 10


def test_marker_round_trip():
    assert parse_marker(marker(42, 1234.5)) == (42, 1234.5)


@pytest.mark.parametrize("text", [None, "", "hello", "b x 1.0", "b 1", "b 1 2 3", "b 1 notafloat"])
def test_parse_marker_ignores_other_text(text):
    assert parse_marker(text) is None


def test_failure_summary_counts_most_frequent_first():
    reasons = ["timeout"] * 3 + ["reset"] * 2 + ["other"]
    assert list(failure_summary(reasons, top=2).items()) == [("timeout", 3), ("reset", 2)]


def test_target_spreads_source_addresses_and_names_users():
    target = Target("127.0.0.1", 5222, "example.test", "u", "pw",
                    source_ips=("127.0.0.2", "127.0.0.3"))
    assert target.bare(7) == "u7@example.test"
    assert target.client_config(0).source_ip == "127.0.0.2"
    assert target.client_config(1).source_ip == "127.0.0.3"
    assert target.client_config(1).username == "u1"
    assert Target("h", 1, "d").client_config(0).source_ip is None


def test_default_settings_match_the_brief():
    s = Settings()
    assert (s.contacts, s.memory_levels, s.chat_rate) == (20, (1000, 10000), 1000.0)
