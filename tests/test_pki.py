"""The cluster CA: issuing, verifying, identities, and mutual TLS through uvicorn."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from nfvha.errors import ConfigError
from nfvha.pki import identity_from_cert, init_ca, load_ca, verify_cert
from nfvha.tls import Identity, TlsConfig, caller, identity_from_peercert


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_init_writes_private_key_and_secret_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    ca = init_ca(d)
    assert _mode(d) == 0o700
    assert _mode(d / "ca.key") == 0o600 and _mode(d / "liveness.secret") == 0o600
    assert len((d / "liveness.secret").read_text().strip()) == 64
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ConfigError, match="already holds a CA"):
        init_ca(d)
    assert load_ca(d).cert == ca.cert


def test_issue_names_the_host_and_its_addresses(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    out = ca.issue("agent", host="h1", ips=["10.250.0.11", "127.0.0.1"],
                   out_dir=tmp_path / "h1")
    assert out.cert.name == "agent-h1.pem" and _mode(out.key) == 0o600
    assert _mode(tmp_path / "h1") == 0o700
    cert = x509.load_pem_x509_certificate(out.cert.read_bytes())
    assert identity_from_cert(cert) == Identity("agent", "h1")
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "agent:h1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["10.250.0.11",
                                                                          "127.0.0.1"]
    assert verify_cert(out.cert.read_bytes(), ca.cert_path.read_bytes()) == \
        Identity("agent", "h1")
    assert str(verify_cert(ca.issue("manager").cert.read_bytes(),
                           ca.cert_path.read_bytes())) == "manager"


def test_bad_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "pki")
    with pytest.raises(ConfigError, match="names its host"):
        ca.issue("agent")
    with pytest.raises(ConfigError, match="names no host"):
        ca.issue("manager", host="h1")
    # A member of a forwarder pair is named by its certificate, as an agent's host is.
    assert ca.issue("forwarder", host="in1").identity.is_forwarder("in1")
    with pytest.raises(ConfigError, match="role 'operator'"):
        ca.issue("operator")
    with pytest.raises(ConfigError, match="--ip"):
        ca.issue("forwarder", ips=["10.0.0.300"])
    with pytest.raises(ConfigError, match="host"):
        ca.issue("agent", host="h1/../x")
    with pytest.raises(ConfigError, match="no usable CA"):
        load_ca(tmp_path / "none")


def test_a_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    ours = init_ca(tmp_path / "ours")
    theirs = init_ca(tmp_path / "theirs")
    forged = theirs.issue("manager")
    with pytest.raises(ConfigError, match="not issued by this cluster's CA"):
        verify_cert(forged.cert.read_bytes(), ours.cert_path.read_bytes())


def test_identity_from_peercert_reads_the_san_uri() -> None:
    peer = {"subject": ((("commonName", "manager"),),),
            "subjectAltName": (("IP Address", "10.0.0.1"), ("URI", "nfvha://agent/h2"))}
    assert identity_from_peercert(peer) == Identity("agent", "h2")
    assert identity_from_peercert({"subjectAltName": (("URI", "https://x/agent/h2"),)}) is None
    assert identity_from_peercert({"subjectAltName": (("URI", "nfvha://root"),)}) is None
    assert identity_from_peercert(None) is None
    assert caller({"type": "http"}) is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """A uvicorn server with the manager's certificate that answers with its caller."""
    import threading

    import uvicorn

    ca = init_ca(tmp_path / "pki")
    srv = ca.issue("manager", ips=["127.0.0.1"])
    cfg = TlsConfig(srv.cert, srv.key, ca.cert_path)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = str(caller(scope)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_level="warning", **cfg.uvicorn_kwargs()))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    while not server.started:
        asyncio.run(asyncio.sleep(0.02))
    try:
        yield f"127.0.0.1:{port}", ca
    finally:
        server.should_exit = True
        t.join(5)


def test_mutual_tls_gives_routes_the_callers_identity(tls_server: tuple[str, Any],
                                                      tmp_path: Path) -> None:
    addr, ca = tls_server
    agent = ca.issue("agent", host="h3", out_dir=tmp_path / "a")
    ctx = TlsConfig(agent.cert, agent.key, ca.cert_path).client_context()
    with httpx.Client(verify=ctx) as c:
        assert c.get(f"https://{addr}/").text == "agent:h3"
        assert c.get(f"https://{addr}/x").text == "agent:h3"  # keep-alive: same identity
    anon = TlsConfig(agent.cert, agent.key, ca.cert_path).client_context(present=False)
    assert httpx.get(f"https://{addr}/", verify=anon).text == "None"  # an operator


def test_plain_http_and_foreign_certificates_are_refused(tls_server: tuple[str, Any],
                                                         tmp_path: Path) -> None:
    addr, ca = tls_server
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{addr}/", timeout=3)
    other = init_ca(tmp_path / "other")
    forged = other.issue("manager", out_dir=tmp_path / "f")
    ctx = ssl.create_default_context(cafile=str(ca.cert_path))
    ctx.load_cert_chain(str(forged.cert), str(forged.key))
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{addr}/", verify=ctx, timeout=3)
    # ... and a server with a foreign certificate is refused by a cluster client.
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"https://{addr}/", verify=ssl.create_default_context(
            cafile=str(other.cert_path)), timeout=3)
