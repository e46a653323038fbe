"""Errors of the data-access layer (STYLE §8): one small hierarchy.

Rules of this module:
- `ProvisioningError` and its subclasses mean "the request breaks a rule"; the message
  is one line naming the offending key or object, fit to show an admin as is.
- `DatabaseUnavailable` (re-exported from `db.engine`) means "the database cannot be
  reached"; the SRM runner turns it into the Database Failure event (SPEC §6 row 13).
- `FencingConflict` means another node moved the group's epoch first (SPEC §9).
"""

from __future__ import annotations

from presence_ha.db.engine import DatabaseUnavailable

__all__ = [
    "AlreadyExists",
    "DatabaseUnavailable",
    "FailoverInProgress",
    "FencingConflict",
    "InvalidValue",
    "NotFound",
    "ProvisioningError",
]


class ProvisioningError(ValueError):
    """The request breaks a configuration rule; the message says which and why."""


class NotFound(ProvisioningError):
    """A named cluster, node, group, user or parameter does not exist."""


class AlreadyExists(ProvisioningError):
    """A unique name is already taken."""


class InvalidValue(ProvisioningError):
    """A value fails validation; `key` names the field or parameter."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


class FailoverInProgress(ProvisioningError):
    """Refused while a node of the cluster is failed over (SPEC §2, §9)."""


class FencingConflict(Exception):
    """The group's epoch moved since the caller read it: another node acted first."""

    def __init__(self, group: str, expected: int, actual: int | None) -> None:
        super().__init__(
            f"fencing conflict on group {group!r}: expected epoch {expected}, found {actual}"
        )
        self.group = group
        self.expected = expected
        self.actual = actual
