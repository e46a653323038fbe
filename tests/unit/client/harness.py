"""A fake clock around `DualPolicy`: timers from `StartTimer` fire when time is advanced.

Rules: no sleeps, no wall clock, no sockets. `feed(event)` and `advance(seconds)`
return every action the policy produced (timer actions are also applied to the fake
clock), so a test reads like a transcript of facts in and commands out.
"""

from __future__ import annotations

import random

from presence_ha.client.policy import (
    Action,
    BackupInfo,
    BackupInfoReceived,
    CancelTimer,
    Connected,
    DualPolicy,
    Endpoint,
    Event,
    PolicyConfig,
    Role,
    Started,
    StartTimer,
    Timer,
    TimerFired,
)

HOME = Endpoint("10.0.0.1", 5222)
BACKUP = Endpoint("10.0.0.2", 5222)
OTHER = Endpoint("10.0.0.9", 5222)


def backup_info(lower: float = 2.0, upper: float = 5.0, endpoint: Endpoint | None = BACKUP) -> BackupInfo:
    if endpoint is None:
        return BackupInfo(None, None, lower, upper, reason="ha-disabled")
    return BackupInfo("n2", endpoint, lower, upper)


class Harness:
    def __init__(self, seed: int = 1, **config) -> None:
        self.policy = DualPolicy(PolicyConfig(home=HOME, **config), random.Random(seed))
        self.now = 0.0
        self.timers: dict[Timer, float] = {}  # timer -> due time

    def feed(self, event: Event) -> list[Action]:
        actions = self.policy.handle(event)
        for action in actions:
            if isinstance(action, StartTimer):
                self.timers[action.timer] = self.now + action.seconds
            elif isinstance(action, CancelTimer):
                self.timers.pop(action.timer, None)
        return actions

    def advance(self, seconds: float) -> list[Action]:
        """Move the clock; fire due timers in due order; every action produced."""
        end = self.now + seconds
        actions: list[Action] = []
        while (due := sorted((at, t.value, t) for t, at in self.timers.items() if at <= end)):
            at, _, timer = due[0]
            self.now = at
            del self.timers[timer]
            actions += self.feed(TimerFired(timer))
        self.now = end
        return actions

    def dual_up(self, lower: float = 2.0, upper: float = 5.0) -> None:
        """Active up on HOME, backup offered, inactive connection held on BACKUP."""
        self.feed(Started())
        self.feed(Connected(Role.ACTIVE))
        self.feed(BackupInfoReceived(backup_info(lower, upper)))
        self.advance(upper)
        self.feed(Connected(Role.INACTIVE))


def of_type(actions: list[Action], kind: type) -> list[Action]:
    return [a for a in actions if isinstance(a, kind)]
