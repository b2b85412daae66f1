"""A throwaway local etcd cluster for the benchmarks: 1 or 3 members on free 127.0.0.1
ports, data under a directory of its own, killed and removed on the way out.

What the benchmarks need of ``tests/etcdmember.py`` without importing the test suite
(``election_failover.py``, ``manager_failover.py``). The members run with
``FAST_LEASES``, the timings the manager cluster uses: etcd grants a lease no shorter
than 1.5 election timeouts rounded up to whole seconds, 2 s at its defaults (100 ms / 1 s),
so a 1 s leader lease needs them halved. One Go thread per member (``GOMAXPROCS=1``), as
the testbed runs them: three members share the machine's two cores with everything else.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from nfvha.store.etcd import ETCD_MEMBER_FLAGS

#: The flags nfvha's own members run with (raft timings halved: 1 s leases; pre-vote).
FAST_LEASES = ETCD_MEMBER_FLAGS
_PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:
    # A benchmark killed by SIGKILL runs no cleanup: the kernel ends etcd then.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def etcd_missing() -> str | None:
    """Why no etcd can run here, or None."""
    if shutil.which("etcd") is None:
        return "etcd is not installed (Debian: etcd-server); run `make deps`"
    return None


def etcd_version() -> str:
    """``etcd --version``'s first line, or why it could not be read."""
    try:
        out = subprocess.run(["etcd", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    return out.splitlines()[0].replace("etcd Version:", "").strip() if out else "unknown"


@dataclass(frozen=True)
class EtcdMember:
    name: str
    url: str  # client URL, http://127.0.0.1:PORT
    pid: int  # to stop (SIGSTOP) or measure the member


@dataclass(frozen=True)
class EtcdCluster:
    members: tuple[EtcdMember, ...]
    data_dir: Path

    @property
    def url(self) -> str:
        """The first member's client URL."""
        return self.members[0].url

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    def store_url(self, prefix: str) -> str:
        """The managers' ``--store``: every member, and a key prefix of this run's own."""
        return ("etcd://" + ",".join(u.removeprefix("http://") for u in self.urls)
                + "/" + prefix.strip("/"))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _healthy(url: str) -> bool:
    """The member has a leader and answers a linearizable read (so a quorum is there)."""
    try:
        return bool(httpx.get(f"{url}/health", timeout=1).json().get("health") == "true")
    except (httpx.HTTPError, ValueError):
        return False


@contextlib.contextmanager
def etcd_cluster(members: int = 1, *, parent: Path | None = None,
                 extra_args: Sequence[str] = FAST_LEASES, startup_timeout: float = 20.0,
                 prefix: str = "nfvha-bench-etcd-") -> Iterator[EtcdCluster]:
    """Run a static etcd cluster of ``members`` (1 or 3 ...) on loopback; yields it once
    every member is healthy. The data directories are under a fresh directory in
    ``parent`` (default: the system's temporary directory), removed at the end."""
    missing = etcd_missing()
    if missing:
        raise RuntimeError(missing)
    if members < 1:
        raise ValueError("an etcd cluster needs at least one member")
    data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for _attempt in range(3):  # a port taken between choosing and binding: again
            names = [f"e{i + 1}" for i in range(members)]
            clients = {n: f"http://127.0.0.1:{_free_port()}" for n in names}
            peers = {n: f"http://127.0.0.1:{_free_port()}" for n in names}
            initial = ",".join(f"{n}={peers[n]}" for n in names)
            token = f"bench-{os.getpid()}-{time.monotonic_ns()}"
            for n in names:
                shutil.rmtree(data_dir / n, ignore_errors=True)
                log = (data_dir / f"{n}.log").open("wb")
                procs.append(subprocess.Popen(
                    ["etcd", "--name", n, "--data-dir", str(data_dir / n),
                     "--listen-client-urls", clients[n], "--advertise-client-urls", clients[n],
                     "--listen-peer-urls", peers[n], "--initial-advertise-peer-urls", peers[n],
                     "--initial-cluster", initial, "--initial-cluster-state", "new",
                     "--initial-cluster-token", token,
                     "--logger", "zap", "--log-level", "warn", *extra_args],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GOMAXPROCS": "1"},
                    preexec_fn=die_with_parent))
                log.close()
            deadline = time.monotonic() + startup_timeout
            while time.monotonic() < deadline and all(p.poll() is None for p in procs):
                if all(_healthy(clients[n]) for n in names):
                    break
                time.sleep(0.05)
            if all(p.poll() is None for p in procs) and all(_healthy(clients[n])
                                                            for n in names):
                break
            for p in procs:
                _stop(p)
            procs.clear()
        else:
            tail = "".join((data_dir / f"{n}.log").read_text(errors="replace")[-1000:]
                           for n in names if (data_dir / f"{n}.log").exists())
            raise RuntimeError(f"etcd ({members} members) did not become healthy in three "
                               f"tries:\n{tail}")
        yield EtcdCluster(tuple(EtcdMember(n, clients[n], p.pid)
                                for n, p in zip(names, procs, strict=True)), data_dir)
    finally:
        for p in procs:
            _stop(p)
        shutil.rmtree(data_dir, ignore_errors=True)
