"""TLS channel bindings of one client connection (RFC 9266 tls-exporter, RFC 5929 tls-unique).

Rules of this module:
- `TlsBinding(sslobj)` answers which channel-binding types the connection offers and
  their data, for SCRAM-*-PLUS (`server.xmpp.sasl`) and XEP-0440. Data is computed on
  demand (only a -PLUS login asks), so a login without channel binding costs nothing.
- tls-exporter (RFC 9266 §2): the TLS exporter with label "EXPORTER-Channel-Binding",
  an empty context and 32 bytes; offered on TLS 1.3 only (on TLS 1.2 it needs the
  extended master secret, which Python cannot check). Python's `ssl` module has no
  exporter API (CPython issue 95341), so this calls OpenSSL's
  `SSL_export_keying_material` on the `SSL*` the `ssl` module already holds: the
  function is taken from the very library `_ssl` is linked against (dlsym through the
  `_ssl` extension), and the `SSL*` is read from the `_ssl._SSLSocket` object, whose C
  layout (`PyObject_HEAD; PyObject *Socket; SSL *ssl; ...`) is the same in CPython
  3.8-3.14 (extensions such as sslkeylog read it the same way). Only on those CPython
  versions (`KNOWN_LAYOUT`: a newer one is checked, then allowed here) and, before the
  first use, after a self-check that OpenSSL's view of that pointer (`SSL_is_server`,
  `SSL_get_version`) is the `ssl` module's; otherwise tls-exporter is not offered (SCRAM
  without -PLUS still works).
  Why not pyOpenSSL: it would replace the whole client TLS stack (`server.net.transport`
  runs `ssl.MemoryBIO`s) and its cffi calls on every read and write, for 32 bytes per login.
- tls-unique (RFC 5929 §3.1): from the `ssl` module, on TLS 1.2 only (RFC 9266 §3: it is
  undefined for TLS 1.3). Offered because slixmpp and aioxmpp bind with it over TLS 1.2.
"""

from __future__ import annotations

import _ssl
import ctypes
import logging
import ssl
import sys

log = logging.getLogger(__name__)

TLS_EXPORTER = "tls-exporter"
TLS_UNIQUE = "tls-unique"
EXPORTER_LABEL = b"EXPORTER-Channel-Binding"
EXPORTER_LENGTH = 32

KNOWN_LAYOUT = ((3, 8), (3, 15))  # CPython versions [from, to) whose _SSLSocket starts as above
_SSL_POINTER_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p)  # after PyObject_HEAD, Socket


class _Exporter:
    """OpenSSL's exporter on the `SSL*` of an `ssl.SSLObject` (see module rules)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(_ssl.__file__)  # dlsym through _ssl: the libssl it is linked with
        self._export = lib.SSL_export_keying_material
        self._export.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p,
                                 ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
        self._export.restype = ctypes.c_int
        self._is_server = lib.SSL_is_server
        self._is_server.argtypes, self._is_server.restype = [ctypes.c_void_p], ctypes.c_int
        self._version = lib.SSL_get_version
        self._version.argtypes, self._version.restype = [ctypes.c_void_p], ctypes.c_char_p
        self.checked = False

    @staticmethod
    def _pointer(sslobj: ssl.SSLObject) -> int | None:
        inner = sslobj._sslobj  # type: ignore[attr-defined]  # the _ssl._SSLSocket
        if type(inner).__name__ != "_SSLSocket":
            return None
        value = ctypes.c_void_p.from_address(id(inner) + _SSL_POINTER_OFFSET).value
        return value or None

    def _check(self, pointer: int, sslobj: ssl.SSLObject) -> bool:
        """The pointer is the connection's SSL: OpenSSL and `ssl` agree about it."""
        version = self._version(pointer)
        return (self._is_server(pointer) == int(sslobj.server_side)
                and version is not None and version.decode("ascii", "replace") == sslobj.version())

    def export(self, sslobj: ssl.SSLObject) -> bytes | None:
        pointer = self._pointer(sslobj)
        if pointer is None or not (self.checked or self._check(pointer, sslobj)):
            return None
        self.checked = True
        out = ctypes.create_string_buffer(EXPORTER_LENGTH)
        if self._export(pointer, out, EXPORTER_LENGTH, EXPORTER_LABEL, len(EXPORTER_LABEL), b"", 0, 1) != 1:
            return None
        return out.raw


def _load_exporter() -> _Exporter | None:
    if sys.implementation.name != "cpython" or not KNOWN_LAYOUT[0] <= sys.version_info[:2] < KNOWN_LAYOUT[1]:
        log.warning("tls-exporter channel binding unavailable on this Python (%s)", sys.version.split()[0])
        return None
    try:
        return _Exporter()
    except (OSError, AttributeError) as exc:
        log.warning("tls-exporter channel binding unavailable: %s", exc)
        return None


_EXPORTER = _load_exporter()


class TlsBinding:
    """Channel bindings of one established TLS connection (server side)."""

    __slots__ = ("_sslobj",)

    def __init__(self, sslobj: ssl.SSLObject) -> None:
        self._sslobj = sslobj

    def types(self) -> tuple[str, ...]:
        """The types offered on this connection, preferred first."""
        version = self._sslobj.version()
        if version == "TLSv1.3":
            return (TLS_EXPORTER,) if self._exporter_works() else ()
        return (TLS_UNIQUE,) if version is not None else ()

    def _exporter_works(self) -> bool:
        return _EXPORTER is not None and (_EXPORTER.checked or self.data(TLS_EXPORTER) is not None)

    def data(self, cb_type: str) -> bytes | None:
        """The channel-binding data of `cb_type`, or None if not offered here."""
        if cb_type == TLS_EXPORTER and self._sslobj.version() == "TLSv1.3" and _EXPORTER is not None:
            return _EXPORTER.export(self._sslobj)
        if cb_type == TLS_UNIQUE and self._sslobj.version() not in (None, "TLSv1.3"):
            return self._sslobj.get_channel_binding(TLS_UNIQUE)
        return None
