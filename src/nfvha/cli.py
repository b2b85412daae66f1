"""The ``nfvha`` command: daemons (agent), the testbed, and the demo.

Each sub-command parses its options and hands a typed configuration to the code that
does the work; nothing reads global configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from nfvha.errors import NfvhaError

__all__ = ["main"]


def _setup_logging(level: str, json_logs: bool = False) -> None:
    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    if json_logs:
        fmt = ('{"time":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s",'
               '"message":%(message)r}')
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt)
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _read_token(args: argparse.Namespace) -> str:
    if getattr(args, "token_file", None):
        return Path(args.token_file).read_text().strip()
    return os.environ.get("NFVHA_TOKEN", "")


def cmd_agent(args: argparse.Namespace) -> int:
    import uvicorn

    from nfvha.vim.agent import Agent, AgentConfig
    from nfvha.vim.api import create_app

    token = _read_token(args)
    if not token:
        print("nfvha agent: a token is required (--token-file or NFVHA_TOKEN)", file=sys.stderr)
        return 2
    host, _, port = args.listen.rpartition(":")
    cfg = AgentConfig(
        host_id=args.host_id, state_dir=Path(args.state_dir), bridge=args.bridge, token=token,
        manager_url=args.manager, advertise_url=args.advertise_url or f"http://{args.listen}",
        heartbeat_interval=args.heartbeat_interval, keep_checkpoints=args.keep,
        netns_prefix=args.netns_prefix, cgroup_parent=args.cgroup_parent,
        log_dir=Path(args.log_dir), criu_binary=args.criu)
    app = create_app(Agent(cfg))
    uvicorn.run(app, host=host or "0.0.0.0", port=int(port), log_level="warning",
                access_log=False)
    return 0


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


def cmd_demo(args: argparse.Namespace) -> int:
    from nfvha.demo import run_agent_demo

    return asyncio.run(run_agent_demo(keep=args.keep))


def _print(data: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2))
        return
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(Pretty(data))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nfvha", description=__doc__)
    p.add_argument("--log-level", default=os.environ.get("NFVHA_LOG_LEVEL", "info"))
    p.add_argument("--log-json", action="store_true", help="structured JSON log lines")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("agent", help="run the compute-node agent (HTTP API)")
    a.add_argument("--host-id", required=True)
    a.add_argument("--listen", default="0.0.0.0:8700", help="ADDRESS:PORT")
    a.add_argument("--advertise-url", default=None)
    a.add_argument("--bridge", default="br0", help="bridge the VNF veths join")
    a.add_argument("--state-dir", default="/var/lib/nfvha/agent")
    a.add_argument("--token-file", default=None, help="file holding the bearer token")
    a.add_argument("--manager", default=None, help="manager URL for heartbeats and events")
    a.add_argument("--heartbeat-interval", type=float, default=0.1)
    a.add_argument("--keep", type=int, default=3, help="checkpoints kept per instance")
    a.add_argument("--netns-prefix", default=None)
    a.add_argument("--cgroup-parent", default=None)
    a.add_argument("--log-dir", default="/var/log/nfvha/vnf")
    a.add_argument("--criu", default=None, help="path of the criu binary")
    a.set_defaults(func=cmd_agent)

    t = sub.add_parser("testbed", help="emulated hosts on this machine")
    t.add_argument("action", choices=["up", "down", "status", "crash-host", "partition-host"])
    t.add_argument("host", nargs="?", help="host id for crash-host / partition-host")
    t.add_argument("--name", default="nfvha")
    t.add_argument("--hosts", type=int, default=3)
    t.add_argument("--heal", action="store_true", help="partition-host: restore the links")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_testbed)

    d = sub.add_parser("demo", help="the embedded default run")
    d.add_argument("--keep", action="store_true", help="leave the testbed up afterwards")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_json)
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
