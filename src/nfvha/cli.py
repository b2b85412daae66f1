"""The ``nfvha`` command: daemons (agent), the testbed, and the demo.

Each sub-command parses its options and hands a typed configuration to the code that
does the work; nothing reads global configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nfvha.errors import NfvhaError
from nfvha.ha.timings import DEFAULT_TIMINGS, check_host_timings
from nfvha.logs import setup_logging
from nfvha.tls import TlsConfig
from nfvha.web import DEFAULT_MAX_BODY

if TYPE_CHECKING:
    from nfvha.client import ManagerClient
    from nfvha.ha.election import LeaderElection
    from nfvha.store.etcd import EtcdStore

__all__ = ["main"]


def _read_token(args: argparse.Namespace) -> str:
    if getattr(args, "token_file", None):
        return Path(args.token_file).read_text().strip()
    return os.environ.get("NFVHA_TOKEN", "")


def _raise_priority(nice: int) -> None:
    """HA daemons must keep heartbeats on time on a loaded host (corosync runs real-time
    for the same reason): they run ahead of the VNFs. Applied after start-up, so that a
    daemon that is starting does not starve the ones already running."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        except OSError as exc:
            logging.getLogger("nfvha").warning("cannot set priority %d: %s", nice, exc)


def _daemon_token(args: argparse.Namespace, *, optional: bool = False) -> str:
    """The bearer token; ``optional`` for daemons that know their callers by certificate
    (an agent or a forwarder with TLS), which are better off without it."""
    token = _read_token(args)
    if not token and not optional:
        raise NfvhaError(f"{args.command}: a token is required (--token-file or "
                         "NFVHA_TOKEN), or TLS (--tls-cert --tls-key --tls-ca)")
    return token


def _tls(args: argparse.Namespace) -> TlsConfig | None:
    return TlsConfig.from_args(args.tls_cert, args.tls_key, args.tls_ca)


def _scheme(tls: TlsConfig | None) -> str:
    return "https" if tls else "http"


def _serve(app: object, args: argparse.Namespace, *,
           shutdown_timeout: int | None = None) -> int:
    """Run a daemon's ASGI app on ``--listen`` at its raised priority.

    When a stop begins, the callables the app lists in ``app.state.on_stop`` are called
    before open requests are waited for, so that long-lived responses (the dashboard's
    event stream) end by themselves; requests still open ``shutdown_timeout`` s later are
    cancelled (None: waited for).
    """
    import socket

    import uvicorn

    # Checkpoint images (a VNF's memory), logs, records and the store are nobody else's
    # to read: files 0600, directories 0700 (CRIU, a child, inherits the mask).
    os.umask(0o077)

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for stop in getattr(getattr(app, "state", None), "on_stop", []):
                stop()
            await super().shutdown(sockets)

    host, _, port = args.listen.rpartition(":")
    _raise_priority(args.nice)  # imports are done: the costly part of starting
    # With TLS there is no plain listener: a plain request to the port fails its handshake.
    tls = _tls(args)
    server = Server(uvicorn.Config(app, host=host or "0.0.0.0",  # type: ignore[arg-type]
                                   port=int(port), log_level="warning", access_log=False,
                                   timeout_graceful_shutdown=shutdown_timeout,
                                   **(tls.uvicorn_kwargs() if tls else {})))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 1


def cmd_agent(args: argparse.Namespace) -> int:
    from nfvha.vim.agent import Agent, AgentConfig
    from nfvha.vim.api import create_app

    check_host_timings(args.heartbeat_interval, args.fencing_timeout)
    tls = _tls(args)
    token = _daemon_token(args, optional=tls is not None)
    cfg = AgentConfig(
        host_id=args.host_id, state_dir=Path(args.state_dir), bridge=args.bridge, token=token,
        manager_url=args.manager,
        advertise_url=args.advertise_url or f"{_scheme(tls)}://{args.listen}", tls=tls,
        liveness_key_file=Path(args.liveness_key_file) if args.liveness_key_file else None,
        heartbeat_interval=args.heartbeat_interval, keep_checkpoints=args.keep,
        fencing_timeout=args.fencing_timeout, agent_grace=args.agent_grace,
        status_interval=args.status_interval, liveness_listen=args.liveness_listen,
        token_file=Path(args.token_file) if args.token_file else None,
        watchdog=Path(args.watchdog) if args.watchdog else None,
        watchdog_timeout=args.watchdog_timeout, keep_vnfs_on_exit=True,
        netns_prefix=args.netns_prefix, cgroup_parent=args.cgroup_parent,
        log_dir=Path(args.log_dir), work_root=Path(args.work_root), criu_binary=args.criu)
    # A stop waits 3 s at most for open requests: a SIGTERM'd agent lingered 14 s once,
    # still feeding its guard but checkpointing nothing, before its successor started.
    return _serve(create_app(Agent(cfg)), args, shutdown_timeout=3)


def cmd_manager(args: argparse.Namespace) -> int:
    from nfvha.ha.timings import FaultTimings
    from nfvha.store.base import StateStore
    from nfvha.store.sqlite import SqliteStore
    from nfvha.vnfm.api import create_manager_app
    from nfvha.vnfm.manager import Manager, ManagerConfig

    # First: unsound timings are refused before anything is read or made.
    timings = FaultTimings(
        heartbeat_interval=args.heartbeat_interval, suspect_after=args.suspect_after,
        fencing_timeout=args.fencing_timeout,
        max_lease=args.max_lease if args.max_lease is not None
        else max(DEFAULT_TIMINGS.max_lease, args.fencing_timeout))
    token = _daemon_token(args)
    tls = _tls(args)
    secret = None
    if args.liveness_secret_file:
        try:
            secret = bytes.fromhex(Path(args.liveness_secret_file).read_text().strip())
        except (OSError, ValueError) as exc:
            raise NfvhaError(f"--liveness-secret-file: {exc}; it is the CA directory's "
                             "liveness.secret (`nfvha pki init`)") from None
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    os.umask(0o077)  # the key file below is created before _serve sets it
    from nfvha.ha.fencing import load_fence_config

    host, _, port = (args.liveness_listen or args.listen).rpartition(":")
    pair = _forwarder_pair(args.forwarder)
    cfg = ManagerConfig(token=token, timings=timings,
                        base_url=args.advertise_url or f"{_scheme(tls)}://{args.listen}",
                        tls=tls, liveness_secret=secret,
                        forwarder_url=None if pair else args.forwarder,
                        forwarders=pair, liveness_listen=(host, int(port)),
                        fencers=load_fence_config(args.fence_config) if args.fence_config
                        else {}, max_body=args.max_body,
                        vnf_network=args.vnf_network,
                        reserved_addresses=_reserved(args.reserve_address),
                        users_file=Path(args.users_file) if args.users_file else None,
                        secret_key_file=Path(args.secret_key_file) if args.secret_key_file
                        else Path(args.db).parent / "manager.key",
                        allow_insecure_callbacks=args.allow_insecure_callbacks)
    if cfg.users_file is None:
        logging.getLogger("nfvha").warning(
            "no --users-file: the cluster token has every role; give operators their own "
            "credentials with `nfvha user add NAME --role operator --users-file FILE`")
    # Dashboard streams end at a stop by themselves (app.state.on_stop); a request
    # still open after this is cut short rather than hold the stop up.
    election = None
    if args.member_id is not None and not args.store:
        raise NfvhaError("--member-id needs --store etcd://...: the members of a manager "
                         "cluster share their state in etcd")
    if args.store:
        from urllib.parse import urlsplit

        from nfvha.store.etcd import EtcdStore, parse_store_url

        endpoints, prefix = parse_store_url(args.store)
        # The member on this manager's own host first: it is reachable whenever this
        # manager is, and a cluster's managers then spread their reads over the members.
        here = urlsplit(cfg.base_url).hostname
        endpoints.sort(key=lambda e: urlsplit(e).hostname != here)
        etcd = EtcdStore(endpoints, prefix=prefix,
                         tls=tls if args.store.startswith("etcd+https://") else None)
        store: StateStore = etcd
        if args.member_id is not None:
            election = _election(args, etcd, cfg.base_url, tls)
    else:
        store = SqliteStore(args.db)
    return _serve(create_manager_app(Manager(store, cfg, election=election)), args,
                  shutdown_timeout=3)


def _forwarder_pair(value: str | None) -> dict[str, str]:
    """``--forwarder ID=URL,ID=URL``: a forwarder pair (id -> URL); one URL alone: {}."""
    if not value or "=" not in value:
        return {}
    from nfvha.tls import Identity

    pair: dict[str, str] = {}
    for item in value.split(","):
        fid, sep, url = item.strip().partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise NfvhaError(f"--forwarder {item!r}: give ID=URL for each member of the "
                             "pair (in1=https://172.31.250.5:8800,in2=https://...)")
        Identity("forwarder", fid)  # a valid member name, as its certificate gives it
        pair[fid] = url
    if len(pair) != 2:
        raise NfvhaError(f"--forwarder names {len(pair)} forwarder(s) with ID=URL: a pair "
                         "is two (one forwarder: --forwarder URL)")
    return pair


def _election(args: argparse.Namespace, store: EtcdStore, url: str,
              tls: TlsConfig | None) -> LeaderElection:
    """The member's campaign: its own etcd client, whose requests time out within one
    keepalive interval (a slow member is abandoned, the next one tried)."""
    import re

    from nfvha.ha.election import ElectionTimings, LeaderElection
    from nfvha.store.etcd import EtcdClient

    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", args.member_id):
        raise NfvhaError(f"--member-id {args.member_id!r}: use a DNS label (a-z, 0-9, '-')")
    timings = ElectionTimings.from_ttl(args.election_ttl)
    client = EtcdClient(store.client.endpoints,
                        tls=tls if args.store.startswith("etcd+https://") else None,
                        timeout=timings.renew_interval)
    return LeaderElection(client, f"{store.prefix}/leader", args.member_id,
                          args.election_ttl, url=url, timings=timings)


def _reserved(items: list[str]) -> dict[str, str]:
    """``ADDRESS[=HOLDER]`` options as a mapping, each address checked."""
    import ipaddress

    out: dict[str, str] = {}
    for item in items:
        addr, _, holder = item.partition("=")
        try:
            out[str(ipaddress.IPv4Address(addr.strip()))] = holder.strip() or "nfvha"
        except ValueError as exc:
            raise NfvhaError(f"--reserve-address {item!r}: {exc}") from exc
    return out


def cmd_forwarder(args: argparse.Namespace) -> int:
    from nfvha.dataplane.api import create_forwarder_app

    tls = _tls(args)
    token = _daemon_token(args, optional=tls is not None)
    pair_flags = {"--id": args.id, "--peer": args.peer, "--mirror-listen": args.mirror_listen,
                  "--manager": args.manager, "--upstream-ip": args.upstream_ip}
    given = [k for k, v in pair_flags.items() if v]
    pair = None
    if given:
        missing = [k for k, v in pair_flags.items() if not v]
        if missing:
            raise NfvhaError(f"a forwarder pair member needs {', '.join(pair_flags)} "
                             f"together; missing: {', '.join(missing)}")
        pair = _pair_member(args, token, tls)
    app = create_forwarder_app(token, interface=args.interface, prefixlen=args.prefixlen,
                               tls=tls is not None,
                               client_tls=tls.client_context() if tls else None, pair=pair)
    return _serve(app, args)


def _pair_member(args: argparse.Namespace, token: str,
                 tls: TlsConfig | None) -> Callable[[Any, Any], Any]:
    """The factory of this forwarder's ``PairMember`` (made inside the app, on its loop)."""
    from nfvha.dataplane.pair import PairMember

    def hostport(flag: str, value: str) -> tuple[str, int]:
        host, _, port = value.rpartition(":")
        try:
            return str(ipaddress.ip_address(host.strip("[]"))), int(port)
        except ValueError as exc:
            raise NfvhaError(f"{flag} {value!r}: give ADDRESS:PORT ({exc})") from exc

    peer = hostport("--peer", args.peer)
    listen = hostport("--mirror-listen", args.mirror_listen)
    try:
        upstream = str(ipaddress.IPv4Address(args.upstream_ip))
    except ValueError as exc:
        raise NfvhaError(f"--upstream-ip {args.upstream_ip!r}: an IPv4 address ({exc})") \
            from exc
    managers = _urls(args.manager, "--manager")
    if tls is not None:
        from cryptography import x509

        from nfvha.pki import identity_from_cert

        ident = identity_from_cert(x509.load_pem_x509_certificate(tls.cert.read_bytes()))
        if ident is None or not ident.is_forwarder(args.id):
            raise NfvhaError(f"--tls-cert {tls.cert} names {ident}, not forwarder {args.id}: "
                             f"issue it with nfvha pki issue --role forwarder --host {args.id}")

    def make(fwd: Any, net: Any) -> Any:
        return PairMember(args.id, fwd, peer=peer, mirror_listen=listen, managers=managers,
                          upstream_ip=upstream, interface=args.interface,
                          prefixlen=args.prefixlen, net=net, token=token,
                          server_tls=tls.server_context() if tls else None,
                          client_tls=tls.client_context() if tls else None)

    return make


def cmd_testbed(args: argparse.Namespace) -> int:
    from nfvha.testbed import Testbed

    async def run() -> int:
        if args.action == "up":
            tb = Testbed(name=args.name, n_hosts=args.hosts)
            await tb.up()
            _print(tb.describe(), args.json)
            return 0
        if args.action == "down":
            await Testbed(name=args.name).down()
            print(f"testbed {args.name} removed")
            return 0
        tb = Testbed.load(args.name)
        if args.action == "status":
            _print(tb.describe(), args.json)
        elif args.action == "crash-host":
            await tb.crash_host(args.host)
            print(f"{args.host}: links cut, every process killed")
        elif args.action == "partition-host":
            await tb.partition_host(args.host, cut=not args.heal)
            print(f"{args.host}: links {'restored' if args.heal else 'cut'}")
        return 0

    return asyncio.run(run())


DEFAULT_TESTBED = "nfvha"
_CONFIG_KEYS = ("manager_url", "manager_urls", "token_file", "ca_file")


@dataclass(frozen=True)
class ManagerConn:
    """Where the CLI finds the manager (every member of a manager cluster, the first
    asked first) and what it proves itself with."""

    urls: tuple[str, ...]
    token: str
    ca_file: str | None = None

    @property
    def url(self) -> str:
        return self.urls[0]


def _urls(value: str | list[str] | tuple[str, ...], source: str) -> tuple[str, ...]:
    """Manager URLs as given by ``source`` (a flag, a variable, a file): one string with
    commas, or a list; a bad one is named with where it came from."""
    from nfvha.client import manager_urls
    from nfvha.errors import ConfigError

    try:
        return manager_urls(value)
    except ConfigError as exc:
        raise NfvhaError(f"{source}: {exc}") from None


def config_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The CLI's config file, and whether it was named explicitly ($NFVHA_CONFIG): then
    it must exist; the default one (``$XDG_CONFIG_HOME/nfvha/config.yaml``) may not."""
    if env.get("NFVHA_CONFIG"):
        return Path(env["NFVHA_CONFIG"]), True
    base = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") \
        else Path(env.get("HOME", "~")).expanduser() / ".config"
    return base / "nfvha" / "config.yaml", False


def load_config(path: Path, required: bool) -> dict[str, Any]:
    """``manager_urls``, ``token_file``, ``ca_file`` of a config file (relative files are
    relative to it); an unknown key is an error, since a typo would silently not apply.

    The managers are ``manager_url`` (one URL, or several with commas: the only key
    before manager clusters) followed by the list ``manager_urls``, duplicates dropped:
    an old file keeps working, and a file may name one manager or a whole cluster."""
    import yaml

    try:
        text = path.read_text()
    except FileNotFoundError:
        if required:
            raise NfvhaError(f"config file {path} (NFVHA_CONFIG) does not exist") from None
        return {}
    except OSError as exc:
        raise NfvhaError(f"config file {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise NfvhaError(f"config file {path} is not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise NfvhaError(f"config file {path}: expected keys {', '.join(_CONFIG_KEYS)}")
    unknown = sorted(set(data) - set(_CONFIG_KEYS))
    if unknown:
        raise NfvhaError(f"config file {path}: unknown key(s) {', '.join(unknown)}; it takes "
                         f"{', '.join(_CONFIG_KEYS)}")
    out: dict[str, Any] = {}
    urls: list[str] = []
    for key in _CONFIG_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if key == "manager_urls":
            if not isinstance(value, list) or not value \
                    or not all(isinstance(u, str) and u for u in value):
                raise NfvhaError(f"config file {path}: manager_urls must be a list of URLs, "
                                 f"not {value!r}")
            urls.extend(value)
            continue
        if not isinstance(value, str) or not value:
            raise NfvhaError(f"config file {path}: {key} must be a string, not {value!r}")
        if key == "manager_url":
            urls.insert(0, value)
        else:
            out[key] = str(path.parent / value)
    if urls:
        out["manager_urls"] = list(_urls(urls, f"config file {path}"))
    return out


def _manager_conn(args: argparse.Namespace,
                  env: Mapping[str, str] | None = None) -> ManagerConn:
    """Manager URLs, token and CA, each from the first source that has it: flags
    (``--url``, ``--token-file``, ``--ca-file``; an explicit ``--name`` testbed counts as
    a flag), then the environment (``NFVHA_URL``, ``NFVHA_TOKEN`` or ``NFVHA_TOKEN_FILE``,
    ``NFVHA_CA_FILE``), then the config file, then the testbed `nfvha up` started.

    The managers come whole from one source (``--url`` and ``NFVHA_URL`` may hold several,
    with commas): a cluster named on the command line is not merged with another one in
    a file."""
    env = os.environ if env is None else env
    name = getattr(args, "name", None)
    # (is it a testbed, its values): a testbed is looked up only while URL or token are
    # missing, so a flag-given manager works with no testbed on the machine. URLs given as
    # text are checked when taken, so a stale NFVHA_URL does not break --url.
    layers: list[tuple[bool, Callable[[], dict[str, Any]]]] = [
        (False, lambda: {"manager_url": args.url, "source": "--url",
                         "token_file": args.token_file,
                         "ca_file": getattr(args, "ca_file", None)}),
        *([(True, lambda: _testbed_layer(name))] if name else []),
        (False, lambda: {"manager_url": env.get("NFVHA_URL"), "source": "NFVHA_URL",
                         "token": env.get("NFVHA_TOKEN"),
                         "token_file": env.get("NFVHA_TOKEN_FILE"),
                         "ca_file": env.get("NFVHA_CA_FILE")}),
        (False, lambda: load_config(*config_path(env))),
        *([] if name else [(True, lambda: _testbed_layer(DEFAULT_TESTBED, required=False))]),
    ]
    found: dict[str, Any] = {}
    for is_testbed, layer in layers:
        if is_testbed and "manager_urls" in found and "token" in found:
            continue
        values = layer()
        if "manager_urls" not in found:
            if values.get("manager_urls"):  # a config file's (checked) or a testbed's
                found["manager_urls"] = _urls(values["manager_urls"], "the testbed")
            elif values.get("manager_url"):
                found["manager_urls"] = _urls(values["manager_url"], values["source"])
        if values.get("ca_file") and "ca_file" not in found:
            found["ca_file"] = values["ca_file"]
        if "token" not in found:
            if values.get("token"):
                found["token"] = values["token"]
            elif values.get("token_file"):
                found["token"] = _token_from(Path(values["token_file"]))
    if "manager_urls" not in found or "token" not in found:
        raise NfvhaError("no manager to talk to: give --url and --token-file, set NFVHA_URL "
                         "and NFVHA_TOKEN_FILE, write them in a config file "
                         f"({config_path(env)[0]}, or NFVHA_CONFIG), or start a testbed "
                         "with `nfvha up`")
    return ManagerConn(found["manager_urls"], found["token"], found.get("ca_file"))


def _token_from(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise NfvhaError(f"token file {path}: {exc.strerror or exc}") from exc
    if not token:
        raise NfvhaError(f"token file {path} is empty")
    return token


def _testbed_layer(name: str, *, required: bool = True) -> dict[str, Any]:
    """What the testbed ``name`` offers: its managers and its operator credential. A
    testbed nobody named may be absent: the caller then says what else would do."""
    from nfvha.errors import ConfigError
    from nfvha.testbed import Testbed

    try:
        tb = Testbed.load(name)
    except ConfigError:
        if required:
            raise
        return {}
    if not tb.with_manager:
        raise NfvhaError(f"testbed {name} runs no manager; start one with `nfvha up`")
    return {"manager_url": tb.manager_url, "manager_urls": tb.manager_urls,
            "token": tb.operator_token or tb.token,
            "ca_file": str(tb.ca_file) if tb.tls else None}


def _verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """How to check the manager's certificate: against ``ca_file`` (the cluster's CA),
    else the system's CAs."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:
        raise NfvhaError(f"CA file {ca_file}: {exc.strerror or exc}") from None


def cmd_up(args: argparse.Namespace) -> int:
    from nfvha.testbed import Testbed

    async def run() -> int:
        tb = Testbed(name=args.name or DEFAULT_TESTBED, n_hosts=args.hosts, with_manager=True,
                     with_forwarder=True, subnet=args.subnet, mgmt_subnet=args.mgmt_subnet,
                     fencing=not args.no_fencing, managers=args.managers,
                     forwarders=args.forwarders)
        await tb.up()
        ca = str(tb.ca_file) if tb.tls else None  # the cluster's CA
        config = tb.dir / "config.yaml"
        # manager_url (the first manager) for callers that know one; manager_urls for
        # those that follow the leader among them.
        _write_private(config, json.dumps({"manager_url": tb.manager_url,
                                           "manager_urls": tb.manager_urls,
                                           "token_file": str(tb.operator_token_file),
                                           "ca_file": ca}, indent=2) + "\n")
        info = {"manager_url": tb.manager_url, "manager_urls": tb.manager_urls,
                "managers": {m.member_id: m.url for m in tb.manager_hosts.values()},
                "store_url": tb.store_url if tb.clustered else None,
                "token_file": str(tb.operator_token_file),
                "viewer_token_file": str(tb.viewer_token_file), "ca_file": ca,
                "config_file": str(config),
                "dashboard_url": f"{tb.manager_url}/#token={tb.viewer_token}",
                "forwarder_url": tb.forwarder_url, "forwarder_urls": tb.forwarder_urls,
                "upstream_address": tb.upstream_address if tb.paired else None,
                "hosts": {h.host_id: h.url for h in tb.hosts.values()}}
        if args.json:
            print(json.dumps(info, indent=2))
            return 0
        if tb.clustered:
            leader = None
            with contextlib.suppress(NfvhaError):
                leader = await tb.leader()
            print(f"managers: {len(tb.manager_hosts)}, on etcd ({tb.store_url})")
            for m in tb.manager_hosts.values():
                print(f"  {m.member_id}: {m.url}"
                      + ("  (leader)" if m.member_id == leader else ""))
        else:
            print(f"manager: {tb.manager_url}")
            if tb.tls:
                print(f"  TLS, CA certificate: {tb.ca_file}")
            print(f"  operator credential: {tb.operator_token_file}")
            print(f"  viewer credential:   {tb.viewer_token_file}")
            print(f"CLI config: {config} (this shell finds the testbed anyway; elsewhere: "
                  f"export NFVHA_CONFIG={config})")
            print(f"dashboard: {info['dashboard_url']}")
            for h in tb.hosts.values():
                print(f"  {h.host_id}: agent {h.url}")
        _print_up_forwarders(tb)
        if not tb.clustered:
            print("next: nfvha deploy examples/flowmon.yaml; nfvha status; nfvha down")
        return 0

    return asyncio.run(run())


def _print_up_forwarders(tb: Any) -> None:
    """What `nfvha up` says of the steering forwarders: each one's control API, and for
    a pair the upstream address the active one holds."""
    if tb.paired:
        print(f"forwarders: a pair (one active, one standby; `nfvha status` says which), "
              f"upstream address {tb.upstream_address}")
    else:
        print("forwarder: one (no standby; `nfvha up --forwarders 2` runs a pair)")
    for i, url in tb.forwarder_urls.items():
        print(f"  {i}: {url}")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner alone from the first byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def cmd_user(args: argparse.Namespace) -> int:
    from nfvha.vnfm.auth import add_user

    token = add_user(Path(args.users_file), args.user, args.role)
    if args.token_file:
        _write_private(Path(args.token_file), token + "\n")
        print(f"{args.user} ({args.role}): credential written to {args.token_file}; any "
              "earlier one of this user no longer works", file=sys.stderr)
    else:
        print(f"{args.user} ({args.role}): the credential below is shown once and stored "
              "nowhere in clear; any earlier one of this user no longer works",
              file=sys.stderr)
        print(token)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from nfvha.testbed import Testbed

    name = args.name or DEFAULT_TESTBED
    asyncio.run(Testbed(name=name).down())
    print(f"testbed {name} and its manager removed")
    return 0


@contextlib.contextmanager
def _manager(args: argparse.Namespace) -> Iterator[ManagerClient]:
    """A client of the manager named by ``args`` (``_manager_conn``); its refusals are
    the typed errors of ``nfvha.client``, printed by ``main``."""
    from nfvha.client import ManagerClient, ManagerUnreachable

    conn = _manager_conn(args)
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # "requests are answered by <leader> now" whenever a command's reads and writes
        # are answered by two members: noise for a one-shot command (status says who leads).
        logging.getLogger("nfvha.follow").setLevel(logging.WARNING)
    with ManagerClient(conn.urls, conn.token, verify=_verify(conn.ca_file), timeout=30) as m:
        try:
            yield m
        except ManagerUnreachable as exc:
            raise ManagerUnreachable(f"{exc}; is it up (`nfvha up`)?") from exc


def cmd_deploy(args: argparse.Namespace) -> int:
    from nfvha.descriptor import load_descriptor

    d = load_descriptor(args.file)  # volumes' relative sources: relative to the file
    with _manager(args) as m:
        m.onboard(d.model_dump(mode="json"))
        vnf = m.create(args.id, d.id)
        op = m.instantiate(vnf["id"])
    _print({"vnfInstanceId": vnf["id"], "operation": op}, args.json)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _manager(args) as m:
        st = m.status()
    hosts, vnfs, alarms = st["hosts"], st["vnfs"], st["alarms"]
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console()
    _print_cluster(con, st["cluster"], st["managers"])
    _print_forwarders(con, st.get("forwarders"))
    t = Table(title="hosts")
    for c in ("host", "state", "heartbeat ago", "instances"):
        t.add_column(c)
    for h in hosts:
        ago = h.get("lastHeartbeatAgoMs")  # None from a follower: it hears none
        t.add_row(h["id"], h["state"], "–" if ago is None else f"{ago} ms",
                  ", ".join(f"{i['id']}:{i['state']}" for i in h["instances"]))
    con.print(t)
    t = Table(title="VNF instances")
    for c in ("id", "state", "host", "backups", "generation"):
        t.add_column(c)
    for v in vnfs:
        t.add_row(v["id"], v["haState"], str(v.get("host")), ", ".join(v.get("backups", [])),
                  str(v.get("generation", 0)))
    con.print(t)
    for a in alarms:
        con.print(f"[red]ALARM[/] {a['perceivedSeverity']} {a['faultType']}: "
                  f"{a['probableCause']}")
    return 0


def _ago(epoch: float, now: float) -> str:
    s = max(0.0, now - epoch)
    return (f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200
            else f"{s / 3600:.0f} h" if s < 172800 else f"{s / 86400:.0f} d")


def _print_cluster(con: Any, view: dict[str, Any] | None,
                   managers: list[dict[str, Any]]) -> None:
    """Who leads, first: in a cluster the leader (member, URL, term, since) and each
    configured manager, with the one that answered; alone, one line."""
    import time
    from datetime import datetime

    from rich.markup import escape
    from rich.table import Table

    answered = next((x for x in managers if x["answered"]), None)
    if view is None:  # a manager from before clusters
        return
    if view.get("mode") != "cluster":
        con.print(f"manager: {escape(answered['url'] if answered else view.get('url', ''))}"
                  " [dim](single manager, no cluster)[/]", soft_wrap=True)
        return
    leader = view.get("leader")
    if leader is None:
        con.print("[bold red]no leader[/]: an election is under way, or etcd has no quorum; "
                  "writes are refused until one is elected"
                  + (f" [dim](election: {escape(str(view['election']))})[/]"
                     if view.get("election") else ""))
    else:
        since = leader.get("since")
        when = "" if not since else (
            f", since {datetime.fromtimestamp(since).strftime('%Y-%m-%d %H:%M:%S')} "
            f"({_ago(since, time.time())} ago)")
        con.print(f"leader: [bold]{escape(leader['member'])}[/] at {escape(leader['url'])}, "
                  f"term {leader['term']}{when}", soft_wrap=True)
    t = Table(title="managers")
    for c in ("member", "url", "role", "answered"):
        t.add_column(c)
    for x in managers:
        role = "leader" if x["leader"] else "follower" if x["answered"] else ""
        t.add_row(x["member"] or "?", x["url"], role, "yes" if x["answered"] else "")
    con.print(t)
    if leader is not None and not any(x["leader"] for x in managers):
        con.print(f"[yellow]the leader {escape(leader['member'])} ({escape(leader['url'])}) is "
                  "not among the managers given: writes are refused (the token is sent to "
                  "configured managers only); add it to --url, NFVHA_URL or manager_urls[/]")
    if answered is not None and not any(x["leader"] for x in managers):
        con.print(f"[yellow]read from {escape(answered['member'] or answered['url'])}, a "
                  "follower, which hears no heartbeats: host states below are as the leader "
                  "last stored them (UP or DOWN, never SUSPECTED), with no heartbeat ages[/]")


def _print_forwarders(con: Any, view: dict[str, Any] | None) -> None:
    """The steering forwarders as the manager sees them: each member's role, how long
    ago it was last heard and whether the standby is in sync, then the pair's alarm.
    Nothing from a manager that has no forwarder or predates pairs (None)."""
    from rich.markup import escape
    from rich.table import Table

    if view is None:
        return
    t = Table(title="forwarders")
    for c in ("id", "role", "last beat", "in sync"):
        t.add_column(c)
    for x in view.get("members") or []:
        ago, sync = x.get("last_beat_ago_s"), x.get("in_sync")
        t.add_row(escape(str(x.get("id", "?"))), escape(str(x.get("role") or "unknown")),
                  "–" if ago is None else f"{ago:.1f} s ago",
                  "–" if sync is None else "yes" if sync else "no")
    con.print(t)
    if view.get("alarm"):
        con.print(f"[red]ALARM[/] forwarders: {escape(str(view['alarm']))}", soft_wrap=True)


def cmd_list(args: argparse.Namespace) -> int:
    with _manager(args) as m:
        _print(m.checkpoints() if args.command == "checkpoints" else m.ops(), args.json)
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    with _manager(args) as m:
        _print({"operation": m.heal(args.id, args.cause)}, args.json)
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    with _manager(args) as m:
        _print({"operation": m.move(args.id, args.to)}, args.json)
    return 0


#: Faults of the control plane (testbed with `nfvha up --managers 3`); --heal undoes each.
_MANAGER_FAULTS = ("kill-manager", "crash-manager-host", "kill-etcd")


def _inject_manager(args: argparse.Namespace, tb: Any) -> int:
    """A manager, a management host or an etcd member down (or, with --heal, back)."""
    target = args.target
    if not tb.clustered and args.fault == "kill-manager":
        target = target or "manager"  # the one manager, whatever it is called
    if args.fault == "kill-manager" and not args.heal:
        member, pids = asyncio.run(tb.kill_manager(target or "leader"))
        print(f"{member}: manager killed (pid {', '.join(map(str, pids))}); not restarted "
              f"(`nfvha inject kill-manager {member} --heal` does)")
        return 0
    if not target or target == "leader":
        raise NfvhaError(f"nfvha inject {args.fault}{' --heal' if args.heal else ''}: name "
                         "the member, e.g. m1" + (f" (members: {', '.join(tb.manager_hosts)})"
                                                  if tb.manager_hosts else ""))
    if args.fault == "kill-manager":
        pid = asyncio.run(tb.restart_manager(target))
        print(f"{target}: manager started again (pid {pid})")
    elif args.fault == "crash-manager-host" and args.heal:
        asyncio.run(tb.restore_manager_host(target))
        print(f"{target}: powered on, links restored, etcd member and manager started")
    elif args.fault == "crash-manager-host":
        asyncio.run(tb.crash_manager_host(target))
        print(f"{target}: links cut, every process killed (etcd member and manager)")
    elif args.heal:
        pid = asyncio.run(tb.restart_etcd(target))
        print(f"{target}: etcd member started again (pid {pid}), healthy")
    else:
        pids = asyncio.run(tb.kill_etcd(target))
        print(f"{target}: etcd member killed (pid {', '.join(map(str, pids))})")
    return 0


#: Faults of the steering forwarders and their ingress hosts; --heal undoes each.
_FORWARDER_FAULTS = ("kill-forwarder", "crash-ingress-host")


def _inject_forwarder(args: argparse.Namespace, tb: Any) -> int:
    """A forwarder process killed (its supervisor starts it again), or an ingress host's
    power cut (with --heal: a forwarder started again, a host powered on)."""
    target = args.target
    if args.fault == "crash-ingress-host":
        if args.heal:
            asyncio.run(tb.restore_ingress_host(target))
            print(f"{target}: powered on, links restored with their MACs, forwarder "
                  "started and answering")
        else:
            asyncio.run(tb.crash_ingress_host(target))
            print(f"{target}: links cut, every process killed (the forwarder"
                  + (" and its supervisor)" if tb.ingress_host(target).pidfile else ")"))
        return 0
    if args.heal:
        pid = asyncio.run(tb.start_forwarder(target))
        print(f"{target}: forwarder started again (pid {pid})")
        return 0
    which = target or "active"
    ingress_id, pid = asyncio.run(tb.kill_forwarder(which))
    g = tb.ingress_host(ingress_id)
    print(f"{ingress_id}: forwarder (pid {pid}"
          + (f", the {which} one" if which in ("active", "standby") else "") + ") killed"
          + (f"; its supervisor starts it again in {tb.agent_restart_delay:g} s"
             if g.pidfile else f"; not restarted (`nfvha inject kill-forwarder "
                               f"{ingress_id} --heal` does)"))
    return 0


def cmd_inject(args: argparse.Namespace) -> int:
    from nfvha.testbed import Testbed

    if args.fault in _MANAGER_FAULTS:
        return _inject_manager(args, Testbed.load(args.name or DEFAULT_TESTBED))
    if args.fault in _FORWARDER_FAULTS:
        if (args.fault == "crash-ingress-host" or args.heal) and \
                args.target in (None, "active", "standby"):
            raise NfvhaError(f"nfvha inject {args.fault}{' --heal' if args.heal else ''}: "
                             "name the ingress host, e.g. in2")
        return _inject_forwarder(args, Testbed.load(args.name or DEFAULT_TESTBED))
    if not args.target:
        raise NfvhaError(f"nfvha inject {args.fault}: name the "
                         + ("VNF instance" if args.fault.endswith("-vnf") else "host"))
    if args.fault in ("kill-vnf", "hang-vnf"):
        fault = args.fault.split("-")[0]
        with _manager(args) as m:
            _print(m.inject(args.target, fault), args.json)
        return 0
    if args.fault == "fence":
        with _manager(args) as m:
            _print(m.fence(args.target), args.json)
        return 0
    tb = Testbed.load(args.name or DEFAULT_TESTBED)
    if args.fault == "kill-agent":
        pid = asyncio.run(tb.kill_agent(args.target, restart=not args.no_restart))
        print(f"{args.target}: agent (pid {pid}) killed"
              + ("; not restarted" if args.no_restart or tb.agent_restart_delay is None
                 else f"; its supervisor restarts it in {tb.agent_restart_delay:g} s"))
        return 0
    if args.fault == "stop-agent":
        pid = asyncio.run(tb.stop_agent(args.target, args.seconds))
        print(f"{args.target}: agent (pid {pid}) stopped for {args.seconds:g} s, continued")
        return 0
    if args.fault == "crash-host":
        asyncio.run(tb.crash_host(args.target))
        print(f"{args.target}: links cut, every process killed")
    else:
        asyncio.run(tb.partition_host(args.target, cut=not args.heal))
        print(f"{args.target}: links {'restored' if args.heal else 'cut'}")
    return 0


def cmd_host(args: argparse.Namespace) -> int:
    with _manager(args) as m:
        _print(m.remove_host(args.id), args.json)
    return 0


def cmd_pki(args: argparse.Namespace) -> int:
    """The cluster CA for real hosts: ``init`` once, then ``issue`` one certificate per
    daemon, copied to its host with its key (and, for an agent, its liveness keys)."""
    from nfvha.ha.liveness import write_key_file
    from nfvha.pki import init_ca, load_ca

    d = Path(args.dir)
    if args.action == "init":
        ca = init_ca(d)
        print(f"CA in {d}: {ca.cert_path} (give it to every daemon as --tls-ca), "
              f"{d / 'ca.key'} (keep it here), {ca.liveness_secret_path} (the manager's "
              "--liveness-secret-file)")
        return 0
    if not args.role:
        raise NfvhaError("nfvha pki issue: --role manager|agent|forwarder is required")
    ca = load_ca(d)
    out = Path(args.out) if args.out else d
    issued = ca.issue(args.role, host=args.host, ips=args.ip or [], dns=args.dns or [],
                      out_dir=out)
    files = {"identity": str(issued.identity), "cert": str(issued.cert),
             "key": str(issued.key), "ca": str(ca.cert_path)}
    if issued.identity.role == "agent" and ca.liveness_secret_path.exists():
        assert issued.identity.host is not None
        keys = out / f"{issued.identity.file_stem}.liveness"
        secret = bytes.fromhex(ca.liveness_secret_path.read_text().strip())
        write_key_file(keys, secret, issued.identity.host)
        files["liveness_key_file"] = str(keys)
    _print(files, args.json)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from nfvha.demo import run_demo

    return asyncio.run(run_demo(keep=args.keep))


def _print(data: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(data))


def _tls_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tls-cert", default=None, help="this daemon's certificate (nfvha pki)")
    p.add_argument("--tls-key", default=None, help="its key (0600)")
    p.add_argument("--tls-ca", default=None,
                   help="the cluster CA: callers' and servers' certificates must be its")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfvha", description=__doc__)
    p.add_argument("--log-level", default=os.environ.get("NFVHA_LOG_LEVEL", "info"))
    p.add_argument("--log-json", action="store_true",
                   default=os.environ.get("NFVHA_LOG_JSON", "") not in ("", "0"),
                   help="one JSON object per log line, decisions with their reason as fields "
                        "(or NFVHA_LOG_JSON=1)")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="run the compute-node agent (HTTP API)")
    a.add_argument("--host-id", required=True)
    a.add_argument("--listen", default="0.0.0.0:8700",
                   help="ADDRESS:PORT: give the management address (the guard's UDP port "
                        "follows it), so that no VNF reaches the API (docs/security.md)")
    a.add_argument("--advertise-url", default=None)
    a.add_argument("--bridge", default="br0", help="bridge the VNF veths join")
    a.add_argument("--state-dir", default="/var/lib/nfvha/agent")
    a.add_argument("--token-file", default=None,
                   help="file holding the bearer token (without TLS only: an agent with TLS "
                        "knows the manager by its certificate and needs no token)")
    a.add_argument("--liveness-key-file", default=None,
                   help="this host's heartbeat keys (`nfvha pki issue --role agent`)")
    _tls_args(a)
    a.add_argument("--manager", default=None, metavar="URL[,URL...]",
                   help="the manager's URL for status reports and events; of a manager "
                        "cluster: every member's (reports go to the leader, the guard's UDP "
                        "heartbeats to all, each at its URL's host and port)")
    a.add_argument("--heartbeat-interval", type=float,
                   default=DEFAULT_TIMINGS.heartbeat_interval,
                   help="liveness heartbeats of the host's lease guard (UDP)")
    a.add_argument("--fencing-timeout", type=float, default=DEFAULT_TIMINGS.fencing_timeout,
                   help="host lease: the guard stops this host's VNFs after losing the manager "
                        "and every peer this many seconds (0: never)")
    a.add_argument("--agent-grace", type=float, default=3.0,
                   help="the guard stops this host's VNFs when the agent itself is silent "
                        "(dead, stopped) this long; a restart within it is a non-event "
                        "(0: never)")
    a.add_argument("--status-interval", type=float, default=0.5,
                   help="how soon a change (an exit, a restore) is reported to the manager "
                        "(HTTP); unchanged, the full status goes every 5 s")
    a.add_argument("--liveness-listen", default=None,
                   help="UDP ADDRESS:PORT of the guard (default: the --advertise-url's)")
    a.add_argument("--watchdog", default=None,
                   help="kernel watchdog device the guard feeds, e.g. /dev/watchdog after "
                        "`modprobe softdog` (resets the host if agent and guard both die); "
                        "off by default")
    a.add_argument("--watchdog-timeout", type=int, default=0, help="seconds (0: the device's)")
    a.add_argument("--keep", type=int, default=3, help="checkpoints kept per instance")
    a.add_argument("--netns-prefix", default=None)
    a.add_argument("--cgroup-parent", default=None)
    a.add_argument("--log-dir", default="/var/log/nfvha/vnf")
    a.add_argument("--work-root", default="/var/lib/nfvha/vnf",
                   help="per-instance working directories; the same path on every host")
    a.add_argument("--criu", default=None, help="path of the criu binary")
    a.add_argument("--nice", type=int, default=-10,
                   help="scheduling priority once started (VNFs and CRIU run at 0)")
    a.set_defaults(func=cmd_agent)

    m = sub.add_parser("manager", help="run the HA manager (SOL003-shaped REST API)")
    m.add_argument("--listen", default="127.0.0.1:8600", help="ADDRESS:PORT")
    m.add_argument("--advertise-url", default=None)
    m.add_argument("--db", default="/var/lib/nfvha/manager.db", help="SQLite state file")
    m.add_argument("--store", default=None, metavar="URL",
                   help="keep the state in etcd instead of --db: etcd://HOST:PORT[,HOST:PORT"
                        "...][/PREFIX], or etcd+https://... with --tls-cert/--tls-key/--tls-ca"
                        " (default prefix /nfvha/default)")
    m.add_argument("--member-id", default=None, metavar="ID",
                   help="run as member ID of a manager cluster on --store etcd://...: the "
                        "members elect a leader, which alone acts; the others serve reads "
                        "and send writes to it (a DNS label, unique in the cluster)")
    m.add_argument("--election-ttl", type=int, default=1, metavar="SECONDS",
                   help="the leader's lease in etcd (whole seconds): a dead leader is "
                        "replaced within about this long (default: 1; etcd's "
                        "--election-timeout must be well below it)")
    m.add_argument("--token-file", default=None, help="the operators' bearer token")
    m.add_argument("--liveness-secret-file", default=None,
                   help="the cluster's liveness secret (liveness.secret of `nfvha pki init`): "
                        "each host's heartbeat key derives from it (default: the token)")
    _tls_args(m)
    m.add_argument("--heartbeat-interval", type=float,
                   default=DEFAULT_TIMINGS.heartbeat_interval)
    m.add_argument("--suspect-after", type=float, default=DEFAULT_TIMINGS.suspect_after,
                   help="seconds without heartbeat before a host is suspected")
    m.add_argument("--fencing-timeout", type=float, default=DEFAULT_TIMINGS.fencing_timeout,
                   help="must equal the agents' --fencing-timeout")
    m.add_argument("--max-lease", type=float, default=None,
                   help="longest lease granted to a strained host (its agent fences after "
                        "that long without contact; failover waits for it); equal to "
                        "--fencing-timeout: leases never stretch (default: "
                        f"{DEFAULT_TIMINGS.max_lease:g} s, or --fencing-timeout if longer)")
    m.add_argument("--forwarder", default=None, metavar="URL | ID=URL,ID=URL",
                   help="steering forwarder URL (for replay), or a forwarder pair's two "
                        "members by id: the manager arbitrates which one is active")
    m.add_argument("--liveness-listen", default=None,
                   help="UDP ADDRESS:PORT for the guards' heartbeats (default: --listen's)")
    m.add_argument("--fence-config", default=None,
                   help="YAML: a fence agent per host (STONITH), e.g. fence_ipmilan with its "
                        "options; hosts without one are waited out (their lease)")
    m.add_argument("--nice", type=int, default=-10,
                   help="scheduling priority once started (VNFs and CRIU run at 0)")
    m.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                   help="largest request body accepted (413 beyond, before it is read)")
    m.add_argument("--vnf-network", default=None, metavar="CIDR",
                   help="the data network VNF addresses must lie in (default: any)")
    m.add_argument("--reserve-address", action="append", default=[],
                   metavar="ADDRESS[=HOLDER]",
                   help="a data network address nfvha holds (a router, the forwarder's "
                        "data side), refused to VNFs; repeatable")
    m.add_argument("--users-file", default=None, metavar="FILE",
                   help="operator and viewer credentials (`nfvha user add`); without it the "
                        "cluster token has every role")
    m.add_argument("--secret-key-file", default=None, metavar="FILE",
                   help="key sealing subscription passwords in the store (default: "
                        "manager.key beside --db; created if missing)")
    m.add_argument("--allow-insecure-callbacks", action="store_true",
                   help="accept BASIC credentials for plain-http callback URIs (they cross "
                        "the network in clear text)")
    m.set_defaults(func=cmd_manager)

    f = sub.add_parser("forwarder", help="run the steering forwarder (packet log, replay)")
    f.add_argument("--listen", default="127.0.0.1:8800", help="control API ADDRESS:PORT")
    f.add_argument("--token-file", default=None)
    _tls_args(f)
    f.add_argument("--interface", default="eth0", help="where service addresses are added")
    f.add_argument("--prefixlen", type=int, default=16)
    f.add_argument("--id", default=None, metavar="ID",
                   help="this forwarder's name in a forwarder pair (with --peer and "
                        "--manager; its TLS certificate names it: nfvha pki issue --role "
                        "forwarder --host ID)")
    f.add_argument("--peer", default=None, metavar="HOST:PORT",
                   help="the other forwarder of the pair: its --mirror-listen address")
    f.add_argument("--mirror-listen", default=None, metavar="HOST:PORT",
                   help="where the standby accepts the active's mirror stream (flows, "
                        "packet log, reply counts)")
    f.add_argument("--manager", default=None, metavar="URL[,URL...]",
                   help="the managers that arbitrate the pair (every member of a cluster)")
    f.add_argument("--upstream-ip", default=None, metavar="ADDRESS",
                   help="the pair's upstream source address, owned with the service "
                        "addresses: the VNFs see each client flow from it, on the same "
                        "port, whichever forwarder is active")
    f.add_argument("--nice", type=int, default=-10,
                   help="scheduling priority once started (VNFs and CRIU run at 0)")
    f.set_defaults(func=cmd_forwarder)

    t = sub.add_parser("testbed", help="emulated hosts on this machine")
    t.add_argument("action", choices=["up", "down", "status", "crash-host", "partition-host"])
    t.add_argument("host", nargs="?", help="host id for crash-host / partition-host")
    t.add_argument("--name", default="nfvha")
    t.add_argument("--hosts", type=int, default=3)
    t.add_argument("--heal", action="store_true", help="partition-host: restore the links")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_testbed)

    u = sub.add_parser("user", help="operator credentials of a manager's users file")
    u.add_argument("action", choices=["add"], help="add a user, or rotate its credential")
    u.add_argument("user", metavar="NAME", help="1-32 of a-z, 0-9, '_', '-'")
    u.add_argument("--role", required=True, choices=["viewer", "operator"],
                   help="viewer: reads; operator: also lifecycle, heal, move, inject, "
                        "subscriptions")
    u.add_argument("--users-file", required=True, metavar="FILE",
                   help="the manager's --users-file (created 0600 if missing)")
    u.add_argument("--token-file", default=None, metavar="FILE",
                   help="write the credential there (0600) instead of printing it")
    u.set_defaults(func=cmd_user)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--url", default=None, metavar="URL[,URL...]",
                       help="manager URL, or every member's of a manager cluster, comma "
                            "separated: requests go to the leader (else NFVHA_URL, the "
                            "config file, the testbed's)")
        c.add_argument("--token-file", default=None,
                       help="credential (else NFVHA_TOKEN[_FILE], the config file, the "
                            "testbed's operator credential)")
        c.add_argument("--ca-file", default=None,
                       help="CA of the manager's certificate (else NFVHA_CA_FILE, the "
                            "config file)")
        c.add_argument("--name", default=None, help=f"testbed name (default {DEFAULT_TESTBED})")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        return c

    c = client("up", "start a testbed with a manager and agents in the background")
    c.add_argument("--hosts", type=int, default=3)
    c.add_argument("--managers", type=int, default=1,
                   help="1: one manager (SQLite); 3 or 5: a manager cluster on etcd, each "
                        "member on a management host of its own (.6 up on both networks)")
    c.add_argument("--subnet", default="10.250.0.0/16",
                   help="data network (gateway .0.1, forwarders .0.5 and .0.4, their "
                        "upstream address .0.3, VNFs .1.x, service "
                        "addresses .2.x)")
    c.add_argument("--mgmt-subnet", default=None, metavar="CIDR",
                   help="management network: manager .1 (a cluster: .6-.10), forwarders "
                        ".5 and .4, hosts .11 up "
                        "(default: 172.31.X.0/24, X the data subnet's second octet)")
    c.add_argument("--no-fencing", action="store_true",
                   help="no STONITH driver: lost hosts are waited out (their lease)")
    c.add_argument("--forwarders", type=int, choices=[1, 2], default=2,
                   help="2: a forwarder pair, one active and one standby fed its flows, each "
                        "on an ingress host of its own (in1 .5, in2 .4 on both networks; "
                        "upstream address .0.3), so that a forwarder's death or its host's "
                        "power cut loses no service; 1: one forwarder (in1), with no standby")
    c.set_defaults(func=cmd_up)
    client("down", "stop and remove the testbed, manager and agents").set_defaults(
        func=cmd_down)
    c = client("deploy", "onboard a VNFD file, create and instantiate an instance")
    c.add_argument("file")
    c.add_argument("--id", default=None, help="instance id (default: generated)")
    c.set_defaults(func=cmd_deploy)
    client("status", "hosts, VNF instances and active alarms").set_defaults(func=cmd_status)
    client("checkpoints", "checkpoints the manager knows").set_defaults(func=cmd_list)
    client("ops", "lifecycle operation occurrences").set_defaults(func=cmd_list)
    c = client("heal", "heal a VNF instance now")
    c.add_argument("id")
    c.add_argument("--cause", default=None)
    c.set_defaults(func=cmd_heal)
    c = client("move", "move a VNF instance to another host (planned: state and TCP "
               "connections kept)")
    c.add_argument("id")
    c.add_argument("--to", default=None, metavar="HOST",
                   help="target host (default: placement picks)")
    c.set_defaults(func=cmd_move)
    c = client("inject", "inject a fault")
    c.add_argument("fault", choices=["kill-vnf", "hang-vnf", "crash-host", "partition-host",
                                     "kill-agent", "stop-agent", "fence", *_MANAGER_FAULTS,
                                     *_FORWARDER_FAULTS])
    c.add_argument("target", nargs="?",
                   help="VNF instance id, host id, manager member id (kill-manager: "
                        "default 'leader', the one the managers name) or ingress host id "
                        "(kill-forwarder: also 'active' or 'standby', default 'active', as "
                        "the forwarders say)")
    c.add_argument("--heal", action="store_true",
                   help="undo: partition-host restores the links, kill-manager starts the "
                        "manager again, crash-manager-host and crash-ingress-host power the "
                        "host on, kill-etcd starts the member again, kill-forwarder starts "
                        "an unsupervised forwarder again (a supervised one restarts by "
                        "itself)")
    c.add_argument("--no-restart", action="store_true",
                   help="kill-agent: its supervisor does not restart it")
    c.add_argument("--seconds", type=float, default=2.0, help="stop-agent: how long")
    c.set_defaults(func=cmd_inject)

    c = client("host", "manage hosts")
    c.add_argument("action", choices=["remove"])
    c.add_argument("id", help="host id")
    c.set_defaults(func=cmd_host)

    k = sub.add_parser("pki", help="the cluster CA and the daemons' certificates (real hosts)")
    k.add_argument("action", choices=["init", "issue"])
    k.add_argument("--dir", required=True, help="the CA directory (0700)")
    k.add_argument("--role", choices=["manager", "agent", "forwarder"])
    k.add_argument("--host", default=None,
                   help="issue --role agent: the host id; --role forwarder: the pair member's "
                        "id (its --id)")
    k.add_argument("--ip", action="append", metavar="ADDRESS",
                   help="an address the daemon listens on (repeat)")
    k.add_argument("--dns", action="append", metavar="NAME", help="a DNS name (repeat)")
    k.add_argument("--out", default=None, help="where to write (default: --dir)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_pki)

    d = sub.add_parser("demo", help="the embedded default run")
    d.add_argument("--keep", action="store_true", help="leave the testbed up afterwards")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_json)
    if args.command == "testbed" and args.action in ("crash-host", "partition-host") \
            and not args.host:
        print(f"nfvha testbed {args.action}: name the host, e.g. h1", file=sys.stderr)
        return 2
    try:
        rc: int = args.func(args)
        return rc
    except NfvhaError as exc:
        print(f"nfvha: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
