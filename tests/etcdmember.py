"""A throwaway single-member etcd for tests: free 127.0.0.1 ports, its own data dir,
killed and removed on the way out whatever happened."""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from nfvha.store.etcd import ETCD_MEMBER_FLAGS
from nfvha.tls import TlsConfig
from tests.conftest import TEST_PREFIX

#: What test_zz_leftovers looks for in a process's command line.
DATA_DIR_PREFIX = f"{TEST_PREFIX}-etcd-"
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # A pytest killed by SIGKILL runs no finalizer: the kernel ends etcd then.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def etcd_missing() -> str | None:
    """Why no etcd can run here, or None; `make test` installs it (scripts/setup.sh)."""
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: etcd-server); run `make deps`"
    return None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


#: etcd's raft timings scaled down 2x: its shortest lease is 1.5 election timeouts
#: rounded up to whole seconds, 2 s at the defaults (100 ms / 1 s), 1 s with these.
FAST_LEASES = ETCD_MEMBER_FLAGS  # 1 s leases, as the manager cluster runs etcd


@dataclass(frozen=True)
class EtcdMember:
    url: str
    pid: int  # for tests that stop (SIGSTOP) and resume the member


@contextmanager
def etcd_member(
    parent: Path | None = None,
    startup_timeout: float = 15.0,
    tls: TlsConfig | None = None,
) -> Iterator[str]:
    """Run one etcd member; yields its client URL (``http://127.0.0.1:PORT``). With
    ``tls``, clients speak https and must present a certificate from ``tls.ca``."""
    with etcd_process(parent, startup_timeout, tls) as member:
        yield member.url


@contextmanager
def etcd_process(
    parent: Path | None = None,
    startup_timeout: float = 15.0,
    tls: TlsConfig | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[EtcdMember]:
    """`etcd_member`, yielding the process too; ``extra_args`` go to etcd (e.g.
    FAST_LEASES)."""
    missing = etcd_missing()
    if missing:
        raise RuntimeError(missing)
    data_dir = Path(tempfile.mkdtemp(prefix=DATA_DIR_PREFIX, dir=parent))
    proc: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(3):  # a port taken between choosing and binding: again
            client, peer = _free_port(), _free_port()
            scheme = "https" if tls else "http"
            url, peer_url = f"{scheme}://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
            secure = ["--cert-file", str(tls.cert), "--key-file", str(tls.key),
                      "--trusted-ca-file", str(tls.ca), "--client-cert-auth"] if tls else []
            log = (data_dir / "etcd.log").open("wb")
            proc = subprocess.Popen(
                ["etcd", "--name", "t", "--data-dir", str(data_dir / "member"),
                 "--listen-client-urls", url, "--advertise-client-urls", url,
                 "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                 "--initial-cluster", f"t={peer_url}", "--initial-cluster-state", "new",
                 "--logger", "zap", "--log-level", "warn", *secure, *extra_args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GOMAXPROCS": "1"},
                preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + startup_timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    verify: ssl.SSLContext | bool = tls.client_context() if tls else True
                    if httpx.get(f"{url}/health", timeout=1,
                                 verify=verify).json().get("health") == "true":
                        break
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(0.05)
            else:
                _stop(proc)
                continue
            if proc.poll() is None:
                break
        else:
            tail = (data_dir / "etcd.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"etcd did not become healthy in three tries:\n{tail}")
        assert proc is not None
        yield EtcdMember(url, proc.pid)
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(data_dir, ignore_errors=True)
