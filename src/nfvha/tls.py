"""Mutual TLS between nfvha's daemons: who is calling, from the certificate it presented.

Stdlib only (``ssl``): every daemon imports it at start. Certificates come from the
cluster's CA (``nfvha.pki``); an identity is ``role`` plus, for an agent, its host.
Uvicorn does not pass the peer certificate to the app, so ``TlsH11Protocol`` reads it
from the connection once, when the handshake is over, and puts it in every request's
scope as the ASGI TLS extension (``scope["extensions"]["tls"]``); ``caller`` reads it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfvha.errors import ConfigError

__all__ = [
    "ROLES",
    "Identity",
    "TlsConfig",
    "TlsH11Protocol",
    "caller",
    "identity_from_peercert",
    "identity_from_uri",
]

ROLES = ("manager", "agent", "forwarder")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$")
_URI = "nfvha://"


@dataclass(frozen=True)
class Identity:
    """A daemon's identity: ``manager``, ``forwarder`` or ``agent:<host>``."""

    role: str
    host: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ConfigError(f"role {self.role!r}: use one of {', '.join(ROLES)}")
        if self.role == "agent" and self.host is None:
            raise ConfigError("an agent's certificate names its host (--host H)")
        if self.role == "manager" and self.host is not None:
            raise ConfigError("a manager's certificate names no host")
        if self.host is not None and not _HOST.match(self.host):
            raise ConfigError(f"host {self.host!r}: 1-63 letters, digits, '-', '_' or '.'")

    @property
    def uri(self) -> str:
        return f"{_URI}{self.role}" + (f"/{self.host}" if self.host else "")

    @property
    def file_stem(self) -> str:
        return self.role + (f"-{self.host}" if self.host else "")

    def is_agent(self, host: str | None = None) -> bool:
        return self.role == "agent" and (host is None or self.host == host)

    def is_forwarder(self, member: str | None = None) -> bool:
        """A forwarder; with ``member``, that member of a forwarder pair (its certificate
        names it as its host: ``nfvha://forwarder/in1``)."""
        return self.role == "forwarder" and (member is None or self.host == member)

    def __str__(self) -> str:
        return self.role + (f":{self.host}" if self.host else "")


def identity_from_uri(uri: str) -> Identity | None:
    """``nfvha://agent/h1`` -> agent:h1; None for anything else."""
    if not uri.startswith(_URI):
        return None
    role, _, host = uri[len(_URI):].partition("/")
    try:
        return Identity(role, host or None)
    except ConfigError:
        return None


def identity_from_peercert(peercert: dict[str, Any] | None) -> Identity | None:
    """The identity in a certificate as ``SSLObject.getpeercert()`` gives it: only a
    certificate the handshake verified against the CA is ever given there."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "URI":
            ident = identity_from_uri(str(value))
            if ident is not None:
                return ident
    return None


@dataclass(frozen=True)
class TlsConfig:
    """A daemon's certificate, key and the cluster CA it trusts."""

    cert: Path
    key: Path
    ca: Path

    @classmethod
    def from_args(cls, cert: str | None, key: str | None, ca: str | None) -> TlsConfig | None:
        """From ``--tls-cert --tls-key --tls-ca``: all three or none."""
        given = [x for x in (cert, key, ca) if x]
        if not given:
            return None
        if len(given) != 3:
            raise ConfigError("TLS needs --tls-cert, --tls-key and --tls-ca together "
                              "(make them with `nfvha pki`)")
        cfg = cls(Path(cert or ""), Path(key or ""), Path(ca or ""))
        for p in (cfg.cert, cfg.key, cfg.ca):
            if not p.is_file():
                raise ConfigError(f"TLS file {p} does not exist")
        return cfg

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Serve TLS and ask every client for a certificate. Optional, so that operators
        (bearer token, no certificate) can connect; a certificate that is presented must
        verify against the CA or the handshake fails."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key),
                "ssl_ca_certs": str(self.ca), "ssl_cert_reqs": ssl.CERT_OPTIONAL,
                "http": TlsH11Protocol}

    def server_context(self) -> ssl.SSLContext:
        """For a daemon-to-daemon stream (a forwarder pair's mirror): its certificate, and
        the peer's required and verified against the CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def client_context(self, *, present: bool = True) -> ssl.SSLContext:
        """For httpx: the server must hold a certificate from the CA for the address
        called; with ``present``, this daemon's certificate goes with every call."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if present:
            ctx.load_cert_chain(str(self.cert), str(self.key))
        return ctx


# -- the server side: uvicorn ----------------------------------------------------------------

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    peer = ssl_object.getpeercert() if der else None
    return {
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
        "client_cert_name": None,
        "client_cert_error": None,  # a bad certificate fails the handshake instead
        "tls_version": None,
        "cipher_suite": None,
        "server_cert": None,
        # Not in the ASGI spec: the verified certificate as ``getpeercert()`` parsed it.
        "client_cert_dict": peer,
        "nfvha_identity": identity_from_peercert(peer),
    }


def _with_tls(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def wrapped(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            scope.setdefault("extensions", {})["tls"] = tls
        await app(scope, receive, send)

    return wrapped


try:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol
except ImportError:  # pragma: no cover - the guard and tools run without uvicorn
    _H11Protocol = asyncio.Protocol  # type: ignore[assignment,misc]


class TlsH11Protocol(_H11Protocol):
    """Uvicorn's h11 protocol, with the peer's verified certificate in every request's
    scope. One instance per connection, so the certificate is read once per connection
    (keep-alive requests reuse it), after the handshake, which asyncio completes before
    ``connection_made``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        tls = _tls_extension(transport)
        if tls is not None:
            self.app = _with_tls(self.app, tls)


def caller(scope: Scope) -> Identity | None:
    """Who is calling: the identity in the verified client certificate of the request's
    connection, or None (plain HTTP, no certificate, or one naming no identity). The one
    function routes ask; pass ``request.scope``."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    ident = tls.get("nfvha_identity")
    return ident if isinstance(ident, Identity) else None
