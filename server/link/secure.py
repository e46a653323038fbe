"""TLS of the node-to-node links: mutual authentication with the cluster's CA, pure rules.

Rules of this module:
- `LinkTls` is what a link endpoint needs: the server and the client `SSLContext`
  (built by `server.tls.link_tls`: TLS 1.3 only, a certificate required from both
  sides, verified to the cluster CA). A certificate of another cluster's CA fails the
  TLS handshake itself.
- A node's link certificate names the node in a URI subject alternative name,
  `urn:presence-ha:node:<name>` (`NODE_URI`). After the handshake each side reads the
  peer's node name from it (`node_of`) and refuses a certificate that names no node, or
  another node than the one dialed, or (server side) a node that is not a peer of this
  one (`identity_refusal`). The link's own handshake then must name the same node.
- Refusal reasons (`handshake_refusal`) are one line a reader understands: what was
  wrong with the peer's certificate, not an OpenSSL code alone.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

NODE_URI = "urn:presence-ha:node:"

# X509_V_ERR_*: the peer's certificate does not chain to this cluster's CA
_FOREIGN = {2, 18, 19, 20, 21, 7}  # unable to get issuer, self signed, self signed in chain, local issuer,
#                                    unable to verify leaf signature, signature failure


@dataclass(frozen=True)
class LinkTls:
    server: ssl.SSLContext
    client: ssl.SSLContext


def node_of(peercert: Mapping[str, Any] | None) -> str | None:
    """The node a verified peer certificate (`SSLObject.getpeercert()`) names, if any."""
    for kind, value in (peercert or {}).get("subjectAltName", ()):
        if kind == "URI" and value.startswith(NODE_URI):
            return str(value[len(NODE_URI):]) or None
    return None


def identity_refusal(named: str | None, expected: str | None, allowed: frozenset[str] | None) -> str | None:
    """Why a peer whose certificate names `named` is refused (None: accepted). `expected`:
    the node this side dialed; `allowed`: the nodes that may dial in (None: any)."""
    if named is None:
        return "its certificate names no node (not a presence-ha link certificate)"
    if expected is not None and named != expected:
        return f"its certificate names node {named!r}, not {expected!r}"
    if expected is None and allowed is not None and named not in allowed:
        return f"its certificate names node {named!r}, which is not a peer of this node"
    return None


def handshake_refusal(exc: BaseException) -> str:
    """One line on a failed TLS handshake of a link."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        what = exc.verify_message or str(exc)
        if exc.verify_code in _FOREIGN:
            return f"its certificate is not issued by this cluster's CA ({what})"
        return f"its certificate failed verification ({what})"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "CERTIFICATE_REQUIRED" in reason or "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason:
            return "it presented no certificate (links need one from the cluster CA)"
        if "WRONG_VERSION_NUMBER" in reason or "HTTP_REQUEST" in reason:
            return "it does not speak TLS (is links.tls off on that node?)"
        if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
            return f"it refused our certificate ({exc.reason}): is it a node of another cluster?"
        if "UNSUPPORTED_PROTOCOL" in reason or "PROTOCOL_VERSION" in reason:
            return f"no common TLS version ({exc.reason}): links need TLS 1.3"
        return f"TLS handshake failed ({exc.reason or exc})"
    if isinstance(exc, TimeoutError):
        return "no TLS handshake within the timeout"
    return f"TLS handshake failed ({exc!r})"
