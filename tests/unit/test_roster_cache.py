"""The per-node roster cache: hits, expiry, and loads that raced an invalidation."""

from __future__ import annotations

from presence_ha.server.roster_cache import RosterCache

ROSTER = {"bob@example.test": ("bob@example.test", "both")}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_finished_load_is_served_until_it_expires():
    clock = Clock()
    cache = RosterCache(ttl_s=30.0, clock=clock)
    assert cache.get("alice@example.test") is None
    cache.finish_load(cache.begin_load(), "alice@example.test", ROSTER)
    clock.now = 29.9
    assert cache.get("alice@example.test") == ROSTER
    clock.now = 30.0
    assert cache.get("alice@example.test") is None


def test_invalidate_drops_the_entry():
    cache = RosterCache(ttl_s=30.0, clock=Clock())
    cache.finish_load(cache.begin_load(), "alice@example.test", ROSTER)
    cache.invalidate("alice@example.test")
    assert cache.get("alice@example.test") is None


def test_a_load_that_raced_a_write_of_that_user_is_not_kept():
    cache = RosterCache(ttl_s=30.0, clock=Clock())
    ticket = cache.begin_load()
    cache.invalidate("alice@example.test")  # a write committed while the load was reading
    cache.finish_load(ticket, "alice@example.test", ROSTER)
    assert cache.get("alice@example.test") is None


def test_a_write_of_another_user_or_before_the_load_does_not_block_it():
    cache = RosterCache(ttl_s=30.0, clock=Clock())
    cache.invalidate("alice@example.test")
    ticket = cache.begin_load()
    cache.invalidate("carol@example.test")
    cache.finish_load(ticket, "alice@example.test", ROSTER)
    assert cache.get("alice@example.test") == ROSTER


def test_a_failed_load_keeps_nothing_and_releases_its_ticket():
    cache = RosterCache(ttl_s=30.0, clock=Clock())
    cache.finish_load(cache.begin_load(), "alice@example.test", None)
    assert cache.get("alice@example.test") is None
    cache.finish_load(cache.begin_load(), "alice@example.test", ROSTER)
    assert cache.get("alice@example.test") == ROSTER
