"""MAM's pure rules (XEP-0313 with XEP-0059 RSM and XEP-0359 ids): no I/O.

Rules of this module:
- `query_of` reads a <query/> into an `ArchiveQuery`: the form fields `with` (a JID),
  `start` and `end` (XEP-0082 date-times), then RSM `max` (default `DEFAULT_MAX`,
  capped at `MAX_PAGE`), `after`, `before` (empty: the last page). Anything malformed
  is `BadQuery` (bad-request); an unknown field is `BadQuery` too (§4.1.2: the server
  must refuse a filter it does not apply, or results would be wrong).
- `should_archive` is the preferences rule (§6): a JID in `never` is never archived,
  one in `always` always is; otherwise the default: always, never, or roster (only
  contacts on the user's roster).
- Messages archived: chat, and normal with a body (§5.1.1), never those with a
  no-store or no-permanent-store hint (XEP-0334), nor errors, groupchat, headlines.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET

from presence_ha.db.archive import ArchivePage, ArchiveQuery, PrefsRow
from presence_ha.server.pubsub import NS_DATA, form_fields
from presence_ha.server.xmpp.jid import JID, InvalidJid
from presence_ha.server.xmpp.stanzas import MessageType

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
NS_SID = "urn:xmpp:sid:0"
NS_DELAY = "urn:xmpp:delay"
DEFAULT_MAX = 50
MAX_PAGE = 250
DEFAULTS = ("always", "never", "roster")
_HINTS = ("{urn:xmpp:hints}no-store", "{urn:xmpp:hints}no-permanent-store")


class BadQuery(ValueError):
    """A query or preferences the server cannot apply (bad-request)."""


def archivable(stanza: ET.Element) -> bool:
    kind = MessageType.of(stanza) or MessageType.NORMAL
    if kind not in (MessageType.CHAT, MessageType.NORMAL) or stanza.find("body") is None:
        return False
    return not any(stanza.find(hint) is not None for hint in _HINTS)


def should_archive(prefs: PrefsRow, peer: str, on_roster: bool) -> bool:
    if peer in prefs.never:
        return False
    if peer in prefs.always:
        return True
    return prefs.default == "always" or (prefs.default == "roster" and on_roster)


def parse_time(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise BadQuery(f"not a XEP-0082 date-time: {text!r}") from exc
    if value.tzinfo is None:
        raise BadQuery(f"a date-time needs a time zone: {text!r}")
    return value.astimezone(dt.UTC)


def format_time(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _filters(form: ET.Element | None) -> dict[str, object]:
    if form is None:
        return {}
    fields = {var: values[0] if values else "" for var, values in form_fields(form).items()}
    form_type = fields.pop("FORM_TYPE", NS_MAM)
    if form_type != NS_MAM:
        raise BadQuery(f"unknown FORM_TYPE {form_type}")
    unknown = set(fields) - {"with", "start", "end"}
    if unknown:
        raise BadQuery(f"unsupported filter {sorted(unknown)[0]}")
    found: dict[str, object] = {}
    if fields.get("with"):
        try:
            found["with_jid"] = str(JID.parse(fields["with"]).bare)
        except InvalidJid as exc:
            raise BadQuery(f"with: {exc}") from exc
    for name in ("start", "end"):
        if fields.get(name):
            found[name] = parse_time(fields[name])
    return found


def _page(rsm: ET.Element | None) -> dict[str, object]:
    if rsm is None:
        return {"max": DEFAULT_MAX}
    found: dict[str, object] = {"max": DEFAULT_MAX}
    max_text = rsm.findtext(f"{{{NS_RSM}}}max")
    if max_text is not None:
        if not max_text.strip().isdigit():
            raise BadQuery("RSM max must be a non-negative integer")
        found["max"] = min(int(max_text), MAX_PAGE)
    after = rsm.findtext(f"{{{NS_RSM}}}after")
    if after:
        found["after"] = after.strip()
    before = rsm.find(f"{{{NS_RSM}}}before")
    if before is not None:
        if before.text and before.text.strip():
            found["before"] = before.text.strip()
        else:
            found["last_page"] = True
    return found


def query_of(query: ET.Element) -> ArchiveQuery:
    return ArchiveQuery(**_filters(query.find(f"{{{NS_DATA}}}x")), **_page(query.find(f"{{{NS_RSM}}}set")))  # type: ignore[arg-type]


def result_message(to: str, owner: str, query_id: str | None, stanza_id: str, stamp: dt.datetime,
                   original: ET.Element) -> ET.Element:
    """One archived message as a <result/> (§4.2)."""
    message = ET.Element("message", {"to": to, "from": owner, "id": f"mam-{stanza_id}"})
    attrs = {"id": stanza_id, **({"queryid": query_id} if query_id else {})}
    forwarded = ET.SubElement(ET.SubElement(message, f"{{{NS_MAM}}}result", attrs), f"{{{NS_FORWARD}}}forwarded")
    ET.SubElement(forwarded, f"{{{NS_DELAY}}}delay", {"stamp": format_time(stamp)})
    forwarded.append(original)
    return message


def fin(page: ArchivePage) -> ET.Element:
    """The <fin/> of a query (§4.3): completeness and the RSM page it returned."""
    done = ET.Element(f"{{{NS_MAM}}}fin", {"complete": "true" if page.complete else "false"})
    rsm = ET.SubElement(done, f"{{{NS_RSM}}}set")
    if page.rows:
        ET.SubElement(rsm, f"{{{NS_RSM}}}first", {"index": str(page.first_index)}).text = page.rows[0].stanza_id
        ET.SubElement(rsm, f"{{{NS_RSM}}}last").text = page.rows[-1].stanza_id
    ET.SubElement(rsm, f"{{{NS_RSM}}}count").text = str(page.count)
    return done


def prefs_of(elem: ET.Element) -> PrefsRow:
    default = elem.get("default", "always")
    if default not in DEFAULTS:
        raise BadQuery(f"default must be one of {', '.join(DEFAULTS)}")
    lists = []
    for name in ("always", "never"):
        holder = elem.find(f"{{{NS_MAM}}}{name}")
        jids = [] if holder is None else [(j.text or "").strip() for j in holder.findall(f"{{{NS_MAM}}}jid")]
        try:
            lists.append(tuple(str(JID.parse(j).bare) for j in jids if j))
        except InvalidJid as exc:
            raise BadQuery(str(exc)) from exc
    return PrefsRow(default, lists[0], lists[1])


def prefs_element(prefs: PrefsRow) -> ET.Element:
    elem = ET.Element(f"{{{NS_MAM}}}prefs", {"default": prefs.default})
    for name, jids in (("always", prefs.always), ("never", prefs.never)):
        holder = ET.SubElement(elem, f"{{{NS_MAM}}}{name}")
        for jid in jids:
            ET.SubElement(holder, f"{{{NS_MAM}}}jid").text = jid
    return elem
