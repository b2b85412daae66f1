"""Who may do what on the manager's API: operator credentials with a role (``viewer``
reads, ``operator`` also changes), kept hashed in a users file, apart from the daemons'
cluster token, so that a stolen read-only credential cannot heal, move or delete a VNF.

A credential is ``NAME.SECRET``: the name picks the one entry to check, so a request
costs at most one scrypt (run off the event loop: the manager's heartbeats never wait for
it), and a verified credential is remembered until the users file changes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from nfvha.errors import PROBLEM_PREFIX, ConfigError
from nfvha.web import Refused, token_matches

__all__ = [
    "Authenticator",
    "Principal",
    "Role",
    "User",
    "UsersFileError",
    "add_user",
    "hash_secret",
    "load_users",
    "verify_secret",
]

log = logging.getLogger("nfvha.auth")

# scrypt's "interactive" cost (RFC 7914): about 16 MiB and tens of ms per check. The
# secrets are 256 random bits, so the cost only has to defeat a stolen file's brute force
# of a weak hash, not of a password; stored with each entry so it can be raised later.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 1 << 14, 8, 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # no "." (it ends the name in a token)


class Role(StrEnum):
    """What a credential may do; each role includes the ones before it."""

    VIEWER = "viewer"      # GETs: API, dashboard, event stream, metrics
    OPERATOR = "operator"  # also lifecycle, heal, move, inject, fence, subscriptions

    def allows(self, needed: Role) -> bool:
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1}


class UsersFileError(ConfigError):
    """The users file cannot be read, is too open, or holds a bad entry."""

    problem_type = PROBLEM_PREFIX + "users-file"


@dataclass(frozen=True)
class User:
    name: str
    role: Role
    hash: str = ""  # "scrypt$N$r$p$salt$key", base64 salt and key


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: a user of the users file, or a daemon (cluster token)."""

    name: str
    role: Role
    daemon: bool = False


# -- hashing ------------------------------------------------------------------------------

def hash_secret(secret: str, *, n: int = _SCRYPT_N, r: int = _SCRYPT_R,
                p: int = _SCRYPT_P) -> str:
    """The scrypt hash of ``secret`` with a fresh 16-byte salt, parameters included."""
    salt = os.urandom(16)
    key = hashlib.scrypt(secret.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r,
                         p=p, dklen=32, maxmem=_maxmem(n, r))
    return "$".join(["scrypt", str(n), str(r), str(p), _b64(salt), _b64(key)])


def verify_secret(secret: str, encoded: str) -> bool:
    """Whether ``secret`` hashes to ``encoded``, compared in constant time. A malformed
    entry matches nothing (load_users already refused it; this is the last guard)."""
    try:
        scheme, n_, r_, p_, salt_, key_ = encoded.split("$")
        n, r, p = int(n_), int(r_), int(p_)
        salt, key = base64.b64decode(salt_, validate=True), base64.b64decode(key_,
                                                                              validate=True)
    except (ValueError, binascii.Error):
        return False
    if scheme != "scrypt" or not key or n > 1 << 20 or r > 32 or p > 16:
        return False  # bounds: a forged entry must not make the manager spend gigabytes
    given = hashlib.scrypt(secret.encode("utf-8", "surrogateescape"), salt=salt, n=n, r=r,
                           p=p, dklen=len(key), maxmem=_maxmem(n, r))
    return hmac.compare_digest(given, key)


def _maxmem(n: int, r: int) -> int:
    return 128 * r * n * 2 + (1 << 20)  # OpenSSL's default cap (32 MiB) is just too low


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


# -- the users file -----------------------------------------------------------------------

def load_users(path: Path) -> dict[str, User]:
    """The users of ``path`` (YAML or JSON: ``users: [{name, role, hash}]``), by name.
    Refused when other users could read it: the hashes are what a brute force needs."""
    try:
        st = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise UsersFileError(f"users file {path}: {exc.strerror or exc}; create it with "
                             f"`nfvha user add NAME --role operator --users-file {path}`"
                             ) from exc
    if st.st_mode & 0o077:
        raise UsersFileError(f"users file {path} is readable by others (mode "
                             f"{st.st_mode & 0o777:o}): run `chmod 600 {path}`")
    try:
        data = yaml.safe_load(text) if text.strip() else {}  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise UsersFileError(f"users file {path} is not YAML or JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("users", []), list):
        raise UsersFileError(f"users file {path}: expected `users:` with a list of "
                             "{name, role, hash}")
    users: dict[str, User] = {}
    for i, entry in enumerate(data.get("users") or []):
        where = f"users file {path}, entry {i + 1}"
        if not isinstance(entry, dict):
            raise UsersFileError(f"{where}: expected {{name, role, hash}}, not {entry!r}")
        name, role, hashed = entry.get("name"), entry.get("role"), entry.get("hash")
        if not isinstance(name, str) or not _NAME.match(name):
            raise UsersFileError(f"{where}: name {name!r} must be 1-32 of a-z, 0-9, '_', "
                                 "'-', starting with a letter or digit")
        if role not in {r.value for r in Role}:
            raise UsersFileError(f"{where} ({name}): role {role!r} is not one of "
                                 f"{', '.join(r.value for r in Role)}")
        if not isinstance(hashed, str) or not hashed.startswith("scrypt$") \
                or hashed.count("$") != 5:
            raise UsersFileError(f"{where} ({name}): hash must be scrypt$N$r$p$salt$key as "
                                 "`nfvha user add` writes it")
        if name in users:
            raise UsersFileError(f"{where}: {name} appears twice")
        users[name] = User(name, Role(role), hashed)
    return users


def save_users(path: Path, users: dict[str, User]) -> None:
    """Write ``users`` atomically, mode 0600 from the first byte (JSON for ``*.json``)."""
    data = {"users": [{"name": u.name, "role": u.role.value, "hash": u.hash}
                      for u in sorted(users.values(), key=lambda u: u.name)]}
    text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" \
        else yaml.safe_dump(data, sort_keys=False)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


def add_user(path: Path, name: str, role: Role | str) -> str:
    """Add ``name`` with ``role`` to the users file, or give it a new credential (the
    old one stops working); returns the credential, which is stored nowhere in clear."""
    if not _NAME.match(name):
        raise UsersFileError(f"user name {name!r} must be 1-32 of a-z, 0-9, '_', '-', "
                             "starting with a letter or digit")
    try:
        role = Role(role)
    except ValueError:
        raise UsersFileError(f"role {role!r} is not one of "
                             f"{', '.join(r.value for r in Role)}") from None
    users = load_users(path) if path.exists() else {}
    token = f"{name}.{secrets.token_urlsafe(32)}"
    users[name] = User(name, role, hash_secret(token))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_users(path, users)
    return token


# -- the FastAPI side ---------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)


def _unknown(detail: str) -> Refused:
    """A 401: who is calling is unknown (answered with ``WWW-Authenticate: Bearer``)."""
    return Refused(401, detail, bearer=True)


class Authenticator:
    """Checks the bearer credential of each manager request against a role.

    Without a users file the cluster token is every role (the set-up before operator
    credentials existed). With one, the cluster token is the daemons' credential: it is
    accepted on the routes agents call (``daemon``) and refused elsewhere, and operators
    and viewers use credentials from the file. The file is read again when it changes,
    so ``nfvha user add`` takes effect without a restart; if it then cannot be read, user
    credentials are refused (the daemons' token still works) until it is fixed.
    """

    def __init__(self, cluster_token: str, users_file: Path | None = None) -> None:
        self.cluster_token = cluster_token
        self.users_file = users_file
        self._users: dict[str, User] = {}
        self._seen: tuple[int, int, int] | None = None
        self._broken: str | None = None
        self._verified: dict[bytes, Principal] = {}  # sha256(credential) -> who
        self._scrypt = asyncio.Semaphore(1)  # one CPU-heavy check at a time
        if users_file is not None:
            self._seen = self._stamp()
            self._users = load_users(users_file)  # at start-up a bad file stops the manager

    @property
    def separate(self) -> bool:
        """Whether operator credentials are separate from the cluster token."""
        return self.users_file is not None

    def _stamp(self) -> tuple[int, int, int] | None:
        assert self.users_file is not None
        try:
            st = self.users_file.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _refresh(self) -> None:
        stamp = self._stamp()
        if stamp == self._seen:
            return
        self._seen = stamp
        self._verified.clear()
        try:
            self._users = load_users(self.users_file)  # type: ignore[arg-type]
            self._broken = None
            log.info("users file %s read again: %d user(s)", self.users_file,
                     len(self._users))
        except UsersFileError as exc:
            self._users = {}
            self._broken = str(exc)
            log.error("%s; operator and viewer credentials are refused until it is fixed",
                      exc)

    async def identify(self, credential: str | None) -> Principal:
        """Who sends ``credential``; `Refused` (401) when nobody known does."""
        if not credential:
            raise _unknown("no credential: send 'Authorization: Bearer <token>' "
                           "(`nfvha up` prints where its token files are)")
        if token_matches(credential, self.cluster_token):
            return Principal("cluster", Role.OPERATOR, daemon=True)
        if self.users_file is None:
            raise _unknown("unknown credential: send the cluster token as "
                           "'Authorization: Bearer <token>'")
        self._refresh()
        digest = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        known = self._verified.get(digest)
        if known is not None:
            return known
        name, dot, _ = credential.partition(".")
        user = self._users.get(name) if dot else None
        if user is not None:
            async with self._scrypt:
                ok = await asyncio.to_thread(verify_secret, credential, user.hash)
            if ok:
                who = Principal(user.name, user.role)
                self._verified[digest] = who
                return who
        if self._broken:
            raise _unknown("unknown credential (the manager cannot read its users "
                           "file now; its log says why)")
        raise _unknown("unknown credential: use one `nfvha user add` printed (a "
                       "rotated credential replaces the old one)")

    async def _check(self, request: Request, creds: HTTPAuthorizationCredentials | None,
                     needed: Role, *, daemon_route: bool = False) -> Principal:
        who = await self.identify(creds.credentials if creds else None)
        what = f"{request.method} {request.url.path}"
        if daemon_route:
            if who.daemon:
                return who
            raise Refused(403, f"{what} is for nfvha's own daemons (the cluster token); "
                               f"{who.name!r} is an operator credential")
        if who.daemon and self.separate:
            raise Refused(403, f"{what} needs the {needed.value} role: the cluster token "
                               "is the daemons' credential; use an operator or viewer "
                               "credential (`nfvha user add`)")
        if not who.role.allows(needed):
            raise Refused(403, f"{what} needs the {needed.value} role; {who.name!r} has "
                               f"the {who.role.value} role: use an {needed.value} credential "
                               f"(`nfvha user add NAME --role {needed.value}`)")
        return who

    async def viewer(self, request: Request,
                     creds: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
                     ) -> Principal:
        """Dependency of read routes: any known credential."""
        return await self._check(request, creds, Role.VIEWER)

    async def operator(self, request: Request,
                       creds: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
                       ) -> Principal:
        """Dependency of routes that change something: the operator role."""
        return await self._check(request, creds, Role.OPERATOR)

    async def daemon(self, request: Request,
                     creds: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
                     ) -> Principal:
        """Dependency of the routes agents call (status reports, events)."""
        return await self._check(request, creds, Role.OPERATOR, daemon_route=True)

