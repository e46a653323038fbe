"""MAM's pure rules: what is archived, query forms and RSM, preferences."""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

import pytest

from presence_ha.db.archive import ArchivePage, ArchiveQuery, ArchiveRow, PrefsRow
from presence_ha.server.mam_forms import (
    MAX_PAGE,
    BadQuery,
    archivable,
    fin,
    prefs_element,
    prefs_of,
    query_of,
    should_archive,
)

MAM, RSM, DATA = "urn:xmpp:mam:2", "http://jabber.org/protocol/rsm", "jabber:x:data"


def query(fields: dict[str, str] | None = None, rsm: str = "") -> ET.Element:
    form = ""
    if fields is not None:
        form = f"<x xmlns='{DATA}' type='submit'>" + "".join(
            f"<field var='{k}'><value>{v}</value></field>" for k, v in {"FORM_TYPE": MAM, **fields}.items()) + "</x>"
    paging = f"<set xmlns='{RSM}'>{rsm}</set>" if rsm else ""
    return ET.fromstring(f"<query xmlns='{MAM}'>{form}{paging}</query>")


def test_a_bare_query_is_the_first_page():
    assert query_of(query()) == ArchiveQuery(max=50)


def test_filters_and_paging():
    q = query_of(query({"with": "Bob@Example.test/phone", "start": "2026-12-07T10:00:00Z",
                        "end": "2026-12-07T12:00:00+01:00"}, "<max>10</max><after>abc</after>"))
    assert q.with_jid == "bob@example.test"
    assert q.start == dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC)
    assert q.end == dt.datetime(2026, 12, 7, 11, tzinfo=dt.UTC)
    assert (q.max, q.after, q.before, q.last_page) == (10, "abc", None, False)


def test_before_empty_is_the_last_page_and_max_is_capped():
    q = query_of(query(rsm="<max>100000</max><before/>"))
    assert (q.max, q.before, q.last_page) == (MAX_PAGE, None, True)
    assert query_of(query(rsm="<before>xyz</before>")).before == "xyz"


@pytest.mark.parametrize(("fields", "rsm"), [
    ({"start": "yesterday"}, ""),
    ({"start": "2026-12-07T10:00:00"}, ""),  # no time zone
    ({"with": "@@"}, ""),
    ({"full-text-search": "hi"}, ""),  # a filter we would not apply
    ({}, "<max>-1</max>"),
])
def test_malformed_queries(fields, rsm):
    with pytest.raises(BadQuery):
        query_of(query(fields, rsm))


def test_what_is_archived():
    assert archivable(ET.fromstring("<message type='chat'><body>hi</body></message>"))
    assert archivable(ET.fromstring("<message><body>hi</body></message>"))
    assert not archivable(ET.fromstring("<message type='chat'><active xmlns='http://jabber.org/protocol/chatstates'/>"
                                        "</message>"))
    assert not archivable(ET.fromstring("<message type='headline'><body>news</body></message>"))
    assert not archivable(ET.fromstring("<message type='error'><body>x</body></message>"))
    assert not archivable(ET.fromstring("<message type='chat'><body>otr</body><no-permanent-store "
                                        "xmlns='urn:xmpp:hints'/></message>"))


@pytest.mark.parametrize(("prefs", "on_roster", "archived"), [
    (PrefsRow("always", (), ()), False, True),
    (PrefsRow("never", (), ()), True, False),
    (PrefsRow("roster", (), ()), True, True),
    (PrefsRow("roster", (), ()), False, False),
    (PrefsRow("always", (), ("bob@example.test",)), True, False),
    (PrefsRow("never", ("bob@example.test",), ()), False, True),
])
def test_preferences_rule(prefs, on_roster, archived):
    assert should_archive(prefs, "bob@example.test", on_roster) is archived


def test_prefs_round_trip():
    elem = ET.fromstring(f"<prefs xmlns='{MAM}' default='roster'><always><jid>a@example.test/x</jid></always>"
                         "<never><jid>b@example.test</jid></never></prefs>")
    prefs = prefs_of(elem)
    assert prefs == PrefsRow("roster", ("a@example.test",), ("b@example.test",))
    assert prefs_of(prefs_element(prefs)) == prefs
    with pytest.raises(BadQuery):
        prefs_of(ET.fromstring(f"<prefs xmlns='{MAM}' default='sometimes'/>"))


def test_fin_carries_the_page():
    stamp = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    rows = [ArchiveRow(sid, "b@example.test", True, stamp, "<message/>") for sid in ("s1", "s2")]
    done = fin(ArchivePage(rows, False, 7, 3))
    assert done.get("complete") == "false"
    assert done.find(f"{{{RSM}}}set/{{{RSM}}}first").text == "s1"
    assert done.find(f"{{{RSM}}}set/{{{RSM}}}first").get("index") == "3"
    assert done.find(f"{{{RSM}}}set/{{{RSM}}}last").text == "s2"
    assert done.find(f"{{{RSM}}}set/{{{RSM}}}count").text == "7"
    empty = fin(ArchivePage([], True, 0))
    assert empty.get("complete") == "true" and empty.find(f"{{{RSM}}}set/{{{RSM}}}first") is None
