"""nfvha's own small certificate authority: one CA per cluster, one certificate per daemon.

A daemon's identity is in its certificate, as a SAN URI ``nfvha://<role>[/<host>]`` (and
the same as the CN, ``manager``, ``agent:h1``, ``forwarder``); its SANs also carry the
addresses it listens on, so clients check they reached the daemon they meant to. Keys
are EC P-256 signed with SHA-256; files holding keys are 0600, their directories 0700.

The CA directory also holds the cluster's liveness secret, from which each host's
heartbeat key is derived (``nfvha.ha.liveness.host_key``): the manager gets the secret,
each host's guard only its own key.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from nfvha.errors import ConfigError
from nfvha.tls import Identity, identity_from_uri

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "LIVENESS_SECRET",
    "CertificateAuthority",
    "IssuedCert",
    "identity_from_cert",
    "init_ca",
    "load_ca",
    "verify_cert",
]

CA_CERT = "ca.pem"
CA_KEY = "ca.key"
LIVENESS_SECRET = "liveness.secret"
_CA_DAYS = 3650
_CERT_DAYS = 825  # what browsers accept for a server certificate


@dataclass(frozen=True)
class IssuedCert:
    """Where an issued certificate and its key were written."""

    identity: Identity
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` 0600 from the start (never world-readable, even for a moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    tmp.replace(path)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertificateAuthority:
    """A loaded CA: its certificate, its key and its directory."""

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.dir = directory
        self.cert = cert
        self.key = key

    @property
    def cert_path(self) -> Path:
        return self.dir / CA_CERT

    @property
    def liveness_secret_path(self) -> Path:
        return self.dir / LIVENESS_SECRET

    def issue(self, role: str, *, host: str | None = None, ips: list[str] | tuple[str, ...] = (),
              dns: list[str] | tuple[str, ...] = (), out_dir: Path | None = None,
              days: int = _CERT_DAYS) -> IssuedCert:
        """Issue a certificate for one daemon and write ``<name>.pem`` and ``<name>.key``
        (0600) to ``out_dir`` (default: the CA's directory). An agent names its host."""
        identity = Identity(role, host)  # validates role and host
        try:
            addrs = [ipaddress.ip_address(a) for a in ips]
        except ValueError as exc:
            raise ConfigError(f"--ip: {exc}; give the daemon's listen addresses, e.g. "
                              "--ip 10.0.0.11") from None
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        sans += [x509.IPAddress(a) for a in addrs]
        sans += [x509.DNSName(d) for d in dns]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nfvha"),
                x509.NameAttribute(NameOID.COMMON_NAME, str(identity))]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # clocks differ a bit
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=True, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            # Every daemon is a server (its API) and a client (of the others).
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        out = out_dir or self.dir
        _private_dir(out)
        name = identity.file_stem
        cert_path, key_path = out / f"{name}.pem", out / f"{name}.key"
        _write_private(key_path, _key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return IssuedCert(identity, cert_path, key_path)


def init_ca(directory: Path, *, name: str = "nfvha cluster CA") -> CertificateAuthority:
    """Create a CA (and the cluster's liveness secret) in ``directory``; refuses to
    overwrite one, since every certificate it issued would stop being trusted."""
    _private_dir(directory)
    if (directory / CA_KEY).exists():
        raise ConfigError(f"{directory} already holds a CA ({CA_KEY}); issue certificates "
                          "from it, or use another --dir")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "nfvha"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(directory / CA_KEY, _key_pem(key))
    (directory / CA_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(directory / LIVENESS_SECRET, secrets.token_hex(32).encode() + b"\n")
    return CertificateAuthority(directory, cert, key)


def load_ca(directory: Path) -> CertificateAuthority:
    """The CA in ``directory`` (made by ``init_ca`` / ``nfvha pki init``)."""
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no usable CA in {directory} ({exc}); create one with "
                          f"`nfvha pki init --dir {directory}`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY} is not an EC key")
    return CertificateAuthority(directory, cert, key)


def identity_from_cert(cert: x509.Certificate) -> Identity | None:
    """The nfvha identity a certificate names in its SAN URI (None: it names none).
    Says nothing of who signed it: see ``verify_cert``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        ident = identity_from_uri(uri)
        if ident is not None:
            return ident
    return None


def verify_cert(cert_pem: bytes, ca_pem: bytes, *,
                at: datetime.datetime | None = None) -> Identity:
    """The identity of a certificate, once it is shown to be signed by the CA and valid
    now; ``ConfigError`` saying why otherwise (the TLS handshake does the same check on
    every connection; this is for tools and tests)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise ConfigError(f"certificate {cert.subject.rfc4514_string()} is not issued by "
                          f"this cluster's CA ({ca.subject.rfc4514_string()}): "
                          f"{exc or type(exc).__name__}") from None
    now = at or datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(f"certificate {cert.subject.rfc4514_string()} is valid from "
                          f"{cert.not_valid_before_utc} to {cert.not_valid_after_utc} only")
    ident = identity_from_cert(cert)
    if ident is None:
        raise ConfigError(f"certificate {cert.subject.rfc4514_string()} names no nfvha "
                          "identity (SAN URI nfvha://<role>[/<host>])")
    return ident

