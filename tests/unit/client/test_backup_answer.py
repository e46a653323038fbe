"""`parse_backup`: the server's answer to the backup query (docs/xep-presence-ha-backup.md §3)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from presence_ha.client.connection import NS_BACKUP, parse_backup
from presence_ha.client.policy import DEFAULT_RELOGIN_S, BackupInfo, Endpoint


def answer(inner: str) -> ET.Element:
    return ET.fromstring(f"<backup xmlns='{NS_BACKUP}'>{inner}</backup>")


def test_a_backup_node_with_its_relogin_limits() -> None:
    got = parse_backup(answer("<node name='n2' host='127.0.0.1' port='5232'/><relogin lower='1' upper='3'/>"))
    assert got == BackupInfo("n2", Endpoint("127.0.0.1", 5232), 1.0, 3.0)


def test_no_backup_gives_the_reason_and_the_default_limits() -> None:
    got = parse_backup(answer("<none reason='ha-disabled'/>"))
    assert got == BackupInfo(None, None, *DEFAULT_RELOGIN_S, reason="ha-disabled")


def test_an_empty_answer_means_unsupported() -> None:
    assert parse_backup(None).reason == "unsupported: empty answer"


@pytest.mark.parametrize("inner", [
    "<node name='n2' port='5232'/>",
    "<node name='n2' host='127.0.0.1'/>",
    "<node name='n2' host='h' port='1'/><relogin lower='1'/>",
])
def test_a_missing_mandatory_attribute_is_named(inner: str) -> None:
    with pytest.raises(ValueError, match=r"without (host|port|upper)"):
        parse_backup(answer(inner))
