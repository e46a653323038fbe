"""The cluster key: the file that opens the cluster secret and the CA key kept in the database.

Rules of this module:
- The availability database holds the cluster secret (link authentication, admin token)
  and the cluster CA's private key only sealed with the cluster key: AES-256-GCM
  (`cryptography`'s AESGCM), a fresh 96-bit nonce per value, and the value's name
  ("cluster-secret", "cluster-ca-key") as associated data, so one sealed value cannot
  stand in for the other. Sealed text is `sealed1:` + urlsafe base64 (nonce | ciphertext
  | tag). A reader of the database alone learns neither the secret nor the admin token.
- The key is 32 random bytes in a one-line file, `presence-ha-cluster-key-1 <base64>`,
  mode 0600. Where it is: `--cluster-key PATH`, else `$PRESENCE_HA_CLUSTER_KEY`, else
  `cluster.key` in the data directory (`--data-dir`; for a command given only an SQLite
  URL, the database file's directory; else `./data`). Every node of a cluster and every
  admin command needs the same key: copy the file to each node's host (0600).
- A key file is created atomically (written aside, then hard-linked into place), so
  two processes creating it at once agree on one key; it is never overwritten. A key
  file that group or others may read is refused (as ssh refuses such a private key).
- Values stored in clear by an older version are sealed by `seal_with` (run by
  `presence-ha db upgrade` and `up`), which makes a key file only then: a sealed
  database whose key is missing is refused, never given a new key. A node refuses to
  start on a clear secret.
- `rotate_secret` replaces the secret (compare-and-set) with a fresh one sealed with
  the same key; the nodes take it up by themselves (`server.node`).
- Every failure is a `ClusterKeyError` naming the file and the remedy.
- The database layer (`db.clusters`) stores what it is given and does no cryptography.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy.ext.asyncio import AsyncSession

from presence_ha.db import clusters
from presence_ha.db.engine import sqlite_path
from presence_ha.server.tls import make_ca

ENV_CLUSTER_KEY = "PRESENCE_HA_CLUSTER_KEY"
KEY_FILE = "cluster.key"
DEFAULT_DATA_DIR = "data"
HEADER = "presence-ha-cluster-key-1"
PREFIX = "sealed1:"
NONCE_LEN = 12
KEY_LEN = 32
SECRET = "cluster-secret"  # the associated data of each sealed value
CA_KEY = "cluster-ca-key"


class ClusterKeyError(RuntimeError):
    """The cluster key is missing, unreadable, too open, or does not open the database's values."""


def key_path(explicit: str | os.PathLike[str] | None, data_dir: str | os.PathLike[str] | None,
             db_url: str | None = None, env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where the cluster key is (see the module rules for the order)."""
    if explicit:
        return Path(explicit)
    if env.get(ENV_CLUSTER_KEY):
        return Path(env[ENV_CLUSTER_KEY])
    if data_dir:
        return Path(data_dir) / KEY_FILE
    database = sqlite_path(db_url) if db_url else None
    if database is not None:
        return database.parent / KEY_FILE
    return Path(DEFAULT_DATA_DIR) / KEY_FILE


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)


class ClusterKey:
    """A loaded cluster key: seals and opens the database's secret values."""

    def __init__(self, path: Path, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ClusterKeyError(f"the cluster key at {path} is not {KEY_LEN} bytes")
        self.path = path
        self._aead = AESGCM(key)

    @classmethod
    def load(cls, path: Path) -> ClusterKey:
        """The key in `path`; `ClusterKeyError` if it is missing, malformed or readable by others."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ClusterKeyError(
                f"no cluster key at {path}: copy cluster.key from the data directory where the cluster was "
                "created (`cluster init`, `up`), keeping it mode 0600, or name it with --cluster-key / "
                f"${ENV_CLUSTER_KEY}") from None
        except OSError as exc:
            raise ClusterKeyError(f"cannot read the cluster key at {path}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
            if mode & 0o077:
                raise ClusterKeyError(f"the cluster key at {path} is readable by others (mode {mode:04o}): "
                                      f"`chmod 600 {path}`")
            text = fh.read(4096).decode("ascii", "replace").strip()
        header, _, encoded = text.partition(" ")
        try:
            key = base64.urlsafe_b64decode(encoded.encode())
        except (binascii.Error, ValueError):
            key = b""
        if header != HEADER or len(key) != KEY_LEN:
            raise ClusterKeyError(f"{path} is not a presence-ha cluster key (expected one line "
                                  f"`{HEADER} <{KEY_LEN} bytes, base64>`)")
        return cls(path, key)

    @classmethod
    def create(cls, path: Path) -> ClusterKey:
        """A new random key written to `path` (0600, parent made 0700 if missing); if a key
        appeared there meanwhile (another process), that one. Never overwrites a key."""
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_LEN)
        line = f"{HEADER} {base64.urlsafe_b64encode(key).decode()}\n".encode()
        aside = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(aside, path)  # atomic, and fails if a key is already there
            except FileExistsError:
                return cls.load(path)
        finally:
            aside.unlink(missing_ok=True)
        return cls(path, key)

    @classmethod
    def load_or_create(cls, path: Path) -> ClusterKey:
        return cls.load(path) if path.exists() else cls.create(path)

    def seal(self, value: str, what: str) -> str:
        nonce = secrets.token_bytes(NONCE_LEN)
        sealed = self._aead.encrypt(nonce, value.encode(), what.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def open(self, stored: str, what: str) -> str:
        """The clear value of `stored`; `ClusterKeyError` if this key does not open it."""
        if not is_sealed(stored):
            raise ClusterKeyError(f"the {what} is stored in clear in the database (an older version wrote it): "
                                  "run `presence-ha db upgrade` with this cluster key to seal it")
        try:
            raw = base64.urlsafe_b64decode(stored[len(PREFIX):].encode())
            return self._aead.decrypt(raw[:NONCE_LEN], raw[NONCE_LEN:], what.encode()).decode()
        except (binascii.Error, ValueError, InvalidTag):
            raise ClusterKeyError(
                f"the cluster key at {self.path} does not open this database's {what}: copy cluster.key from "
                "the data directory where the cluster was created (`cluster init`, `up`) or from another "
                "node's host") from None


# --- the cluster's secret values, through db.clusters --------------------------------------


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def create_cluster(session: AsyncSession, name: str, domain: str, key: ClusterKey) -> clusters.ClusterInfo:
    """The database's cluster, with a fresh secret and CA, both sealed with `key`."""
    info = await clusters.create_cluster(session, name, domain, key.seal(new_secret(), SECRET))
    await cluster_ca(session, key)
    return info


async def cluster_secret(session: AsyncSession, key: ClusterKey) -> str:
    """The cluster secret in clear (link authentication, admin token)."""
    return key.open(await clusters.stored_secret(session), SECRET)


def sealed_ca(domain: str, key: ClusterKey) -> tuple[str, str]:
    """A new cluster CA: (certificate PEM, private key PEM sealed with `key`)."""
    cert, private = make_ca(domain)
    return cert, key.seal(private, CA_KEY)


async def cluster_ca(session: AsyncSession, key: ClusterKey) -> tuple[str, str]:
    """The cluster CA (certificate PEM, key PEM in clear), made and sealed if there is none yet."""
    cert, stored = await clusters.cluster_ca(session, lambda domain: sealed_ca(domain, key))
    return cert, key.open(stored, CA_KEY)


async def rotate_secret(session: AsyncSession, key: ClusterKey) -> None:
    """Replace the cluster secret with a fresh one (the old one must open with `key`)."""
    stored = await clusters.stored_secret(session)
    key.open(stored, SECRET)  # the right key, and not a clear value: `db upgrade` first
    if not await clusters.replace_secret(session, stored, key.seal(new_secret(), SECRET)):
        raise ClusterKeyError("the cluster secret changed during the rotation (another rotation?): run it again")


async def has_clear_values(session: AsyncSession) -> bool:
    """Whether the cluster's secret or CA key is still stored in clear (an older version)."""
    ca_key = await clusters.stored_ca_key(session)
    stored = [await clusters.stored_secret(session), *([ca_key] if ca_key is not None else [])]
    return not all(is_sealed(value) for value in stored)


async def seal_with(session: AsyncSession, path: Path) -> list[str]:
    """Seal what is in clear with the key at `path`, made if missing; with nothing in
    clear, only check that the key at `path` (which must exist) opens the secret. What was sealed."""
    if await has_clear_values(session):
        return await seal_stored(session, ClusterKey.load_or_create(path))
    await cluster_secret(session, ClusterKey.load(path))
    return []


async def seal_stored(session: AsyncSession, key: ClusterKey) -> list[str]:
    """Seal what an older version stored in clear; the names of what was sealed."""
    sealed = []
    stored = await clusters.stored_secret(session)
    if not is_sealed(stored):
        await clusters.replace_secret(session, stored, key.seal(stored, SECRET))
        sealed.append("the cluster secret")
    else:
        key.open(stored, SECRET)  # the key must be the cluster's, or we would mix two keys
    ca_key = await clusters.stored_ca_key(session)
    if ca_key is not None and not is_sealed(ca_key):
        await clusters.replace_ca_key(session, ca_key, key.seal(ca_key, CA_KEY))
        sealed.append("the cluster CA key")
    return sealed
