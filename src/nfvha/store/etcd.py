"""etcd v3 backend of the state store: one key per record, every write one etcd txn.

Spoken over etcd's grpc-gateway JSON API (``/v3/...``) with httpx; `EtcdStore` says why.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from nfvha.store.base import (
    ConflictError,
    LeadershipLost,
    NotFound,
    Op,
    Record,
    StateStore,
    StoreError,
    check_key,
    check_kind,
    matches_where,
)
from nfvha.tls import TlsConfig

__all__ = [
    "API_PATH",
    "DEFAULT_PREFIX",
    "DEFAULT_TIMEOUT",
    "MIN_ETCD_VERSION",
    "EtcdClient",
    "EtcdStore",
    "Guard",
    "parse_store_url",
]

logger = logging.getLogger(__name__)

#: The gateway's path since etcd 3.4 (Debian 12 ships 3.4.23); 3.3's ``/v3beta`` is gone
#: in 3.5, ``/v3`` is served by every release we accept.
API_PATH = "/v3"
MIN_ETCD_VERSION = (3, 4)
#: How nfvha runs the etcd members it starts (the testbed, the benchmarks, the tests),
#: and what an operator's cluster for a manager cluster needs too: raft timings halved,
#: so that etcd grants 1 s leases (its shortest is 1.5 election timeouts rounded up to
#: whole seconds, 2 s at its defaults); pre-vote, so that a member cut off from the
#: others does not depose etcd's raft leader when it comes back (without it, each heal
#: of the e2e test's cut cost seconds of raft elections and several manager leaders in
#: a row); history older than an hour compacted, since the leader beats five times a
#: second (`nfvha.ha.election`).
ETCD_MEMBER_FLAGS = ("--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote",
                     "--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1h")
#: Each call is one round trip to one member; the same bound as SQLite's busy timeout.
#: Seconds to wait for a member to accept a connection before trying the next one.
CONNECT_TIMEOUT = 0.25
DEFAULT_TIMEOUT = 1.0
DEFAULT_PREFIX = "/nfvha/default"

# gRPC status codes the gateway puts in an error body's "code".
_GRPC_UNAVAILABLE = 14
_GRPC_DEADLINE_EXCEEDED = 4
#: etcd's answer when raft dropped a proposal before it entered the log (while its raft
#: leadership moves, as `nfvha.ha.etcdleader` makes it): nothing was applied, so even a
#: write is sent again. A terminate failed on it in the cluster e2e test, and its VNF
#: stayed TERMINATING.
_DROPPED = "raft proposal dropped"
_DROPPED_RETRIES = 3
_DROPPED_PAUSE_S = 0.05


def _b64(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix`` (etcd's idiom:
    the prefix with its last byte incremented)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # the prefixes we build end in "/", never in 0xff
    return base64.b64encode(bytes(raw)).decode("ascii")


@dataclass(frozen=True)
class Guard:
    """A fencing token the store compares in every write: the write applies only while
    ``key`` is the one its writer holds, created at ``create_revision`` (a key deleted and
    campaigned for again gets a new one) and, if given, still bound to ``lease``.

    Set by a leader on its store once elected (issue 14: leader election with a lease);
    a write after the key changed raises `LeadershipLost`, and nothing of it is applied.
    """

    key: str
    create_revision: int
    lease: int | None = None

    def compares(self) -> builtins.list[dict[str, Any]]:
        key = _b64(self.key)
        out: builtins.list[dict[str, Any]] = [
            {"key": key, "target": "CREATE", "result": "EQUAL",
             "create_revision": str(self.create_revision)}]
        if self.lease is not None:
            out.append({"key": key, "target": "LEASE", "result": "EQUAL",
                        "lease": str(self.lease)})
        return out

    def held_in(self, kv: dict[str, Any] | None) -> bool:
        """Whether ``kv`` (the guard key as read, or None if absent) still matches."""
        if kv is None or int(kv.get("create_revision", 0)) != self.create_revision:
            return False
        return self.lease is None or int(kv.get("lease", 0)) == self.lease


class EtcdClient:
    """etcd's v3 gateway over one httpx client: POST a request body, get its JSON answer.

    ``endpoints`` are the members' client URLs (``http://10.0.0.1:2379``); a call goes to
    the member that answered last and fails over to the next on a connection error.
    Whether a call may also move on after it reached a member (a read timing out, a
    member without a leader) depends on ``idempotent``: a write whose answer was lost may
    have been applied, so it is reported, never sent twice. Every failure is a
    `StoreError`; thread-safe. ``transport`` replaces the network in tests.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        tls: TlsConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        api_path: str = API_PATH,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        urls = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not urls:
            raise StoreError("etcd store: no endpoint given (e.g. http://127.0.0.1:2379)")
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise StoreError(f"etcd endpoint {url!r}: give a client URL, http://HOST:PORT"
                                 " or https://HOST:PORT")
        if tls is None and any(u.startswith("https://") for u in urls):
            raise StoreError("etcd endpoints use https:// but no TLS certificate, key and CA"
                             " were given")
        self.endpoints = tuple(urls)
        self.api_path = "/" + api_path.strip("/")
        self._lock = threading.Lock()
        self._current = 0
        verify: Any = tls.client_context() if tls is not None else True
        # trust_env=False: an HTTP proxy set for the daemons' other traffic must not sit
        # between a manager and its store.
        # A short connect timeout: a member whose host lost power answers nothing, and
        # every call of the store's (synchronous, on the manager's event loop) would wait
        # the full timeout before trying the next member. A connection on the management
        # network takes well under a millisecond; a refused one fails at once anyway.
        self._http: httpx.Client | None = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            verify=verify, trust_env=False,
            transport=transport)

    def __repr__(self) -> str:
        return f"EtcdClient({','.join(self.endpoints)})"

    def call(self, path: str, body: dict[str, Any], *, idempotent: bool) -> dict[str, Any]:
        """POST ``body`` to ``{api_path}{path}`` and return the answer's JSON object."""
        return self._request("POST", self.api_path + path, body, idempotent=idempotent)

    def version(self) -> tuple[int, int]:
        """The cluster's version (``/version``'s etcdcluster), as (major, minor)."""
        answer = self._request("GET", "/version", None, idempotent=True)
        text = str(answer.get("etcdcluster") or answer.get("etcdserver") or "")
        try:
            major, minor = (int(x) for x in text.split(".")[:2])
        except ValueError:
            raise StoreError(f"etcd at {self._endpoint()} reports version {text!r}, which"
                             " nfvha cannot read") from None
        return major, minor

    def call_at(self, endpoint: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to one given member (no fail-over): for requests about that member, such
        as its status, or that only a member in a given role serves."""
        http = self._http
        if http is None:
            raise StoreError(f"etcd store {','.join(self.endpoints)} is closed")
        url = endpoint + self.api_path + path
        try:
            response = http.request("POST", url, json=body)
        except httpx.TransportError as exc:
            raise StoreError(f"etcd {url}: {exc or type(exc).__name__}") from exc
        answer = self._answer(response, url)
        if isinstance(answer, str):
            raise StoreError(f"etcd {url}: {answer}")
        return answer

    def close(self) -> None:
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    # --- internals ---------------------------------------------------------------------

    def _endpoint(self) -> str:
        return self.endpoints[self._current]

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None, *, idempotent: bool
    ) -> dict[str, Any]:
        with self._lock:
            http = self._http
            start = self._current
        if http is None:
            raise StoreError(f"etcd store {','.join(self.endpoints)} is closed")
        failures: builtins.list[str] = []
        for step in range(len(self.endpoints)):
            index = (start + step) % len(self.endpoints)
            url = self.endpoints[index] + path
            try:
                response = http.request(method, url, json=body)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failures.append(f"{self.endpoints[index]}: {exc or type(exc).__name__}")
                continue  # the request never left: safe to send to the next member
            except httpx.TransportError as exc:
                detail = f"{self.endpoints[index]}: {exc or type(exc).__name__}"
                if idempotent:
                    failures.append(detail)
                    continue
                raise StoreError(
                    f"etcd write to {detail}: no answer, so it may or may not have been"
                    " applied; read the records again before deciding"
                ) from exc
            except RuntimeError as exc:  # httpx: the client was closed meanwhile
                raise StoreError(f"etcd store {','.join(self.endpoints)} is closed") from exc
            answer = self._answer(response, url)
            for _ in range(_DROPPED_RETRIES):
                if not (isinstance(answer, str) and _DROPPED in answer):
                    break
                time.sleep(_DROPPED_PAUSE_S)  # a leader transfer takes a few heartbeats
                try:
                    answer = self._answer(http.request(method, url, json=body), url)
                except httpx.TransportError as exc:
                    answer = (f"no answer after a dropped proposal ({exc or type(exc).__name__}),"
                              " so it may or may not have been applied; read again first")
                    break
            if isinstance(answer, str):  # an error the member reported
                if idempotent and self._member_cannot_serve(response):
                    failures.append(f"{self.endpoints[index]}: {answer}")
                    continue
                raise StoreError(f"etcd {url}: {answer}")
            if index != start:
                with self._lock:
                    self._current = index
                logger.info("etcd store: now using %s (%s failed)", self.endpoints[index],
                            "; ".join(failures))
            return answer
        raise StoreError(
            f"etcd store: no member answered ({'; '.join(failures)}); is the etcd cluster"
            " up and does it have quorum?"
        )

    @staticmethod
    def _answer(response: httpx.Response, url: str) -> dict[str, Any] | str:
        """The JSON object of a 200 answer, or what the error answer says."""
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code == 200 and isinstance(payload, dict):
            return payload
        if response.status_code == 404 and not isinstance(payload, dict):
            return ("not found: is this an etcd 3.4 or later client URL (its v3 gateway"
                    " answers under /v3)?")
        if isinstance(payload, dict) and ("message" in payload or "error" in payload):
            return f"{payload.get('message') or payload.get('error')} (HTTP"\
                   f" {response.status_code})"
        return f"unexpected answer, HTTP {response.status_code}: {response.text[:200]!r}"

    @staticmethod
    def _member_cannot_serve(response: httpx.Response) -> bool:
        """A member without a leader, or overloaded: another member may answer."""
        try:
            code = response.json().get("code")
        except (ValueError, AttributeError):
            return response.status_code >= 500
        return code in (_GRPC_UNAVAILABLE, _GRPC_DEADLINE_EXCEEDED)


class EtcdStore(StateStore):
    """`StateStore` on an etcd v3 cluster, for managers that share their state.

    Layout: a record is one key, ``<prefix>/<kind>/<id>``, whose value is the JSON
    ``{"data": ..., "updatedAt": ...}``. etcd's own per-key ``version`` is exactly the
    contract's (1 on create, +1 per write, reset by a delete), so it is the record's
    version and every compare-and-set compares it. Every write, single or many, is one
    etcd txn: the ops' conditions (and the `Guard`, if set) as its compares, the writes as
    its success branch, reads of the keys concerned as its failure branch, from which a
    refusal is explained (ConflictError, NotFound, LeadershipLost) with no second round
    trip. `list` orders by ``create_revision``; records created by one `transaction` share
    it and come in id order. Reads are serializable (any member answers from its own copy,
    as the contract allows). etcd refuses a txn of more than 128 ops by default
    (``--max-txn-ops``), and requests over 1.5 MiB (``--max-request-bytes``).

    Why the grpc-gateway with httpx rather than a client library: the store interface is
    synchronous and called from the event loop for one short round trip, so `aetcd`
    (asyncio gRPC, with grpcio) would need a loop of its own in another thread for every
    call; `etcd3gw` (OpenStack tooz's, synchronous, on the same gateway) talks to one
    member only, takes transactions as the raw gateway JSON anyway (so encoding and
    explaining them would still be ours) and brings requests, futurist and pbr. The
    gateway's JSON API is documented and stable from etcd 3.4 on; httpx is already
    nfvha's HTTP client, with TLS client certificates, timeouts and a thread-safe pool,
    and `EtcdClient` adds what the libraries lack: a list of members with fail-over.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        prefix: str = DEFAULT_PREFIX,
        tls: TlsConfig | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        guard: Guard | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        if not prefix.startswith("/") or prefix.rstrip("/") == "":
            raise StoreError(f"etcd key prefix {prefix!r}: give a path such as /nfvha/site-a")
        self.prefix = prefix.rstrip("/")
        #: Compared in every write while set; see `Guard`. Set and cleared by whoever
        #: holds the leadership; a plain attribute, read once per write.
        self.guard = guard
        #: Named in every guarded write's envelope (a manager cluster's member id).
        self.writer: str | None = None
        #: Serializable reads are answered by any member from its own copy, at no cost to
        #: the cluster, but a member cut off from the others answers from a copy that no
        #: longer changes. A leader's decisions are made by compare-and-set, so it reads
        #: that way; a follower serving the API reads linearizably (through etcd's raft
        #: leader), so that what it shows is never silently stale: a member that cannot
        #: reach the quorum fails the read instead.
        self.serializable_reads = True
        #: Set (to why) while the writer knows it may not write: every write is then
        #: refused here with `LeadershipLost`, with no round trip. A demoted leader's
        #: winding-down tasks write nothing, and none of them waits out etcd's timeouts
        #: with the event loop held when etcd is what it lost. Stricter than the `guard`
        #: alone, which lets a write through while the old key still lives at etcd.
        self.writes_fenced: str | None = None
        # kind -> id -> (version, stored envelope, updatedAt), in creation order; None:
        # reads go to etcd. See `cache_reads`.
        self._cache: dict[str, dict[str, tuple[int, str, float]]] | None = None
        self._cache_lock = threading.RLock()
        self.client = EtcdClient(endpoints, tls=tls, timeout=timeout)
        try:
            found = self.client.version()
        except BaseException:
            self.client.close()
            raise
        if found < MIN_ETCD_VERSION:
            self.client.close()
            raise StoreError(
                f"etcd at {self.client.endpoints[0]} runs {found[0]}.{found[1]}; nfvha needs"
                f" {MIN_ETCD_VERSION[0]}.{MIN_ETCD_VERSION[1]} or later (its /v3 gateway)"
            )

    @classmethod
    def from_url(cls, url: str, *, tls: TlsConfig | None = None) -> EtcdStore:
        """From a store URL (`parse_store_url`), e.g. ``etcd://10.0.0.1:2379,10.0.0.2:2379``."""
        endpoints, prefix = parse_store_url(url)
        return cls(endpoints, prefix=prefix, tls=tls)

    def __repr__(self) -> str:
        return f"EtcdStore({','.join(self.client.endpoints)}, prefix={self.prefix!r})"

    # --- reads -------------------------------------------------------------------------

    def get(self, kind: str, id: str) -> Record:
        record = self.find(kind, id)
        if record is None:
            raise NotFound(f"{kind}/{id} not found")
        return record

    def lead(self, guard: Guard, writer: str | None) -> None:
        """This store's writer leads (a manager cluster's promotion): writes go out
        fenced by ``guard`` and signed by ``writer``, reads are served from memory
        (`cache_reads`) and, when they go to etcd, serializably (the one writer's
        compare-and-set decides, see ``serializable_reads``)."""
        self.guard, self.writer = guard, writer
        self.serializable_reads = True
        self.cache_reads(True)
        self.writes_fenced = None

    def follow(self, why: str) -> None:
        """This store's writer may not write (a follower, or a leader just demoted):
        every write is refused here (``writes_fenced``, why), reads go to etcd
        linearizably. The guard stays: were a write to get past, a stale guard makes it
        fail at etcd, where none would let it pass."""
        self.writes_fenced = why
        self.serializable_reads = False
        self.cache_reads(False)

    def cache_reads(self, on: bool) -> None:
        """Serve reads from memory, kept by this store's own writes (on), or from etcd.

        For a leader only: its `guard` fences every write, so while it leads no other
        writer's write can succeed, and what it wrote is what etcd holds. A kind is read
        from etcd once (linearizably) on its first read; a write whose outcome is unknown
        (no answer) or refused drops its kinds, which are read again. Turned on at each
        promotion and off at a demotion. Why: a leader's loop reads every VNF on every
        turn and each probe reads its VNF's record; one synchronous etcd round trip each
        (about 1 ms) on the event loop made a 100-VNF leader fall behind its probes."""
        with self._cache_lock:
            self._cache = {} if on else None

    def _cached(self, kind: str) -> dict[str, tuple[int, str, float]] | None:
        """The cache of ``kind`` (loaded now if it is not yet), or None if off."""
        with self._cache_lock:
            cache = self._cache
            if cache is None:
                return None
            if kind not in cache:
                start = f"{self.prefix}/{kind}/"
                answer = self.client.call(
                    "/kv/range", {"key": _b64(start), "range_end": _prefix_end(start)},
                    idempotent=True)
                named = [(_unb64(kv["key"]).decode()[len(start):], kv)
                         for kv in answer.get("kvs") or []]
                named.sort(key=lambda item: (int(item[1].get("create_revision", 0)),
                                             item[0]))
                loaded: dict[str, tuple[int, str, float]] = {}
                for id, kv in named:
                    record = self._record(kind, id, kv)  # checks it is one of ours
                    loaded[id] = (record.version, _unb64(kv["value"]).decode(),
                                  record.updated_at)
                cache[kind] = loaded
            return cache[kind]

    def _uncache(self, ops: Sequence[Op]) -> None:
        with self._cache_lock:
            if self._cache is not None:
                for op in ops:
                    self._cache.pop(op.kind, None)

    @staticmethod
    def _from_cache(kind: str, id: str, entry: tuple[int, str, float]) -> Record:
        version, text, updated_at = entry
        return Record(kind, id, version, json.loads(text)["data"], updated_at)

    def find(self, kind: str, id: str) -> Record | None:
        check_key(kind, id)
        cached = self._cached(kind)
        if cached is not None:
            with self._cache_lock:
                entry = cached.get(id)
            return None if entry is None else self._from_cache(kind, id, entry)
        answer = self.client.call(
            "/kv/range", {"key": _b64(self._key(kind, id)),
                          "serializable": self.serializable_reads},
            idempotent=True)
        kvs = answer.get("kvs") or []
        return self._record(kind, id, kvs[0]) if kvs else None

    def list(self, kind: str, *, where: dict[str, Any] | None = None) -> builtins.list[Record]:
        check_kind(kind)
        cached = self._cached(kind)
        if cached is not None:
            with self._cache_lock:
                entries = list(cached.items())
            records = (self._from_cache(kind, id, entry) for id, entry in entries)
            return [record for record in records if matches_where(record.data, where)]
        start = f"{self.prefix}/{kind}/"
        answer = self.client.call(
            "/kv/range",
            {"key": _b64(start), "range_end": _prefix_end(start),
             "serializable": self.serializable_reads},
            idempotent=True)
        named = [(_unb64(kv["key"]).decode()[len(start):], kv)
                 for kv in answer.get("kvs") or []]
        named.sort(key=lambda item: (int(item[1].get("create_revision", 0)), item[0]))
        records = (self._record(kind, id, kv) for id, kv in named)
        return [record for record in records if matches_where(record.data, where)]

    # --- atomic writes -----------------------------------------------------------------

    def create(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        return self._write_one(Op.create(kind, id, data))

    def put(self, kind: str, id: str, data: dict[str, Any]) -> Record:
        return self._write_one(Op.put(kind, id, data))

    def cas_update(
        self, kind: str, id: str, expected_version: int, data: dict[str, Any]
    ) -> Record:
        return self._write_one(Op.cas(kind, id, expected_version, data))

    def delete(self, kind: str, id: str, expected_version: int | None = None) -> None:
        self._commit([Op.delete(kind, id, expected_version)])

    def transaction(self, ops: Sequence[Op]) -> builtins.list[Record]:
        seen: set[tuple[str, str]] = set()
        for op in ops:
            if (op.kind, op.id) in seen:
                raise StoreError(
                    f"{op.kind}/{op.id} appears twice in one transaction; merge those ops"
                    " into one (etcd refuses a txn that touches a key twice)"
                )
            seen.add((op.kind, op.id))
        if not ops:
            return []
        return self._commit(ops)

    def close(self) -> None:
        self.client.close()

    # --- internals ---------------------------------------------------------------------

    def _key(self, kind: str, id: str) -> str:
        return f"{self.prefix}/{kind}/{id}"

    def _write_one(self, op: Op) -> Record:
        (record,) = self._commit([op])
        return record

    def _commit(self, ops: Sequence[Op]) -> builtins.list[Record]:
        """Apply ``ops`` as one etcd txn, or raise why not; the written records in order."""
        fenced = self.writes_fenced
        if fenced is not None:
            raise LeadershipLost(f"write of {', '.join(f'{o.kind}/{o.id}' for o in ops)}"
                                 f" refused: {fenced}")
        guard = self.guard
        now = time.time()
        compares: builtins.list[dict[str, Any]] = guard.compares() if guard else []
        explain: builtins.list[dict[str, Any]] = (
            [{"request_range": {"key": _b64(guard.key)}}] if guard else [])
        writes: builtins.list[dict[str, Any]] = []
        texts: builtins.list[str | None] = []
        for op in ops:
            key = _b64(self._key(op.kind, op.id))
            explain.append({"request_range": {"key": key}})
            if op.action == "create":
                compares.append({"key": key, "target": "VERSION", "result": "EQUAL",
                                 "version": "0"})
            elif op.expected_version is not None:
                compares.append({"key": key, "target": "VERSION", "result": "EQUAL",
                                 "version": str(op.expected_version)})
                if op.expected_version < 1:  # version 0 would match an absent key
                    compares.append({"key": key, "target": "VERSION", "result": "GREATER",
                                     "version": "0"})
            if op.action == "delete":
                texts.append(None)
                writes.append({"request_delete_range": {"key": key}})
                continue
            text = _encode(op, now, guard, self.writer)
            texts.append(text)
            writes.append({"request_put": {"key": key, "value": _b64(text),
                                           "prev_kv": op.action == "put"}})
        try:
            answer = self.client.call(
                "/kv/txn", {"compare": compares, "success": writes, "failure": explain},
                idempotent=False)
        except StoreError:
            self._uncache(ops)  # applied or not: read again
            raise
        if not answer.get("succeeded"):
            self._uncache(ops)
            raise self._refusal(ops, guard, answer)
        records: builtins.list[Record] = []
        responses = answer.get("responses") or []
        for i, (op, stored) in enumerate(zip(ops, texts, strict=True)):
            if stored is None:
                continue
            if op.action == "create":
                version = 1
            elif op.action == "cas" and op.expected_version is not None:
                version = op.expected_version + 1
            else:  # put: whatever was there, plus one
                put = responses[i].get("response_put", {}) if i < len(responses) else {}
                version = int((put.get("prev_kv") or {}).get("version", 0)) + 1
            records.append(Record(op.kind, op.id, version, json.loads(stored)["data"], now))
        with self._cache_lock:
            cache = self._cache
            if cache is not None:
                written = iter(records)
                for op, stored in zip(ops, texts, strict=True):
                    kind_cache = cache.get(op.kind)
                    if stored is None:
                        if kind_cache is not None:
                            kind_cache.pop(op.id, None)
                        continue
                    record = next(written)
                    if kind_cache is not None:
                        kind_cache[op.id] = (record.version, stored, now)
        return records

    def _refusal(
        self, ops: Sequence[Op], guard: Guard | None, answer: dict[str, Any]
    ) -> StoreError:
        """Why the txn's compares failed, from the failure branch's reads of its keys."""
        found: builtins.list[dict[str, Any] | None] = []
        for response in answer.get("responses") or []:
            kvs = (response.get("response_range") or {}).get("kvs") or []
            found.append(kvs[0] if kvs else None)
        if guard is not None:
            kv = found.pop(0) if found else None
            if not guard.held_in(kv):
                now = ("absent" if kv is None else
                       f"created at revision {kv.get('create_revision', 0)}, lease"
                       f" {kv.get('lease', 0)}")
                return LeadershipLost(
                    f"write refused: leader key {guard.key} is no longer the one this"
                    f" manager holds (it held revision {guard.create_revision}"
                    f"{f', lease {guard.lease}' if guard.lease is not None else ''}; now"
                    f" {now}); stop acting as the leader"
                )
        for op, kv in zip(ops, found, strict=False):
            name = f"{op.kind}/{op.id}"
            current = None if kv is None else int(kv.get("version", 0))
            if op.action == "create" and current is not None:
                return ConflictError(f"{name} already exists (version {current})")
            if op.expected_version is not None:
                if current is None:
                    return NotFound(f"{name} not found (expected version"
                                    f" {op.expected_version})")
                if current != op.expected_version:
                    return ConflictError(f"{name} is at version {current}, not the expected"
                                         f" {op.expected_version}")
        return ConflictError(
            f"transaction of {len(ops)} ops refused by etcd, but its records now match"
            " (a concurrent writer got in between); read again and retry"
        )

    def _record(self, kind: str, id: str, kv: dict[str, Any]) -> Record:
        try:
            envelope = json.loads(_unb64(kv.get("value", "")))
            data, updated_at = envelope["data"], float(envelope["updatedAt"])
            version = int(kv["version"])
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(
                f"etcd key {self._key(kind, id)} does not hold an nfvha record ({exc}); was"
                " it written by something else under this prefix?"
            ) from exc
        if not isinstance(data, dict):
            raise StoreError(f"etcd key {self._key(kind, id)} holds {type(data).__name__}"
                             " data, not an object")
        return Record(kind, id, version, data, updated_at)


def parse_store_url(url: str) -> tuple[builtins.list[str], str]:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` (``etcd+https://`` for TLS) as the
    members' client URLs and the key prefix (default DEFAULT_PREFIX)."""
    schemes = {"etcd://": "http://", "etcd+http://": "http://", "etcd+https://": "https://"}
    scheme = next((s for s in schemes if url.startswith(s)), None)
    if scheme is None:
        raise StoreError(f"store URL {url!r}: use etcd://HOST:PORT[,HOST:PORT...][/PREFIX]"
                         " (etcd+https:// for TLS)")
    members, slash, path = url[len(scheme):].partition("/")
    endpoints = []
    for member in members.split(","):
        host, colon, port = member.strip().rpartition(":")
        if not colon or not host or not port.isdigit():
            raise StoreError(f"store URL {url!r}: member {member!r} is not HOST:PORT")
        endpoints.append(f"{schemes[scheme]}{host}:{port}")
    prefix = "/" + path.strip("/") if slash and path.strip("/") else DEFAULT_PREFIX
    return endpoints, prefix


def _encode(op: Op, now: float, guard: Guard | None = None, writer: str | None = None) -> str:
    """The stored envelope. A guarded write also names its term and writer: what lets an
    auditor reading etcd's history check that each term had one writer (never two
    managers' writes accepted for one term)."""
    envelope: dict[str, Any] = {"data": op.data, "updatedAt": now}
    if guard is not None:
        envelope["term"] = guard.create_revision
        if writer is not None:
            envelope["by"] = writer
    try:
        return json.dumps(envelope, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{op.kind}/{op.id}: data is not storable as JSON: {exc}") from exc
