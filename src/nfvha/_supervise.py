"""Restart a daemon when it dies, as systemd's ``Restart=always`` would (for the testbed).

Run as ``python -S _supervise.py --pidfile F --delay S -- COMMAND...``. The daemon's pid
is written to ``F`` each time it starts, so fault injection can kill or stop the daemon
itself; SIGTERM to the supervisor stops both. Stdlib only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nfvha-supervise")
    ap.add_argument("--pidfile", required=True)
    ap.add_argument("--delay", type=float, default=0.1, help="RestartSec")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    child: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    starts = 0
    while not stopping:
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        starts += 1
        tmp = args.pidfile + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{child.pid}\n")
        os.replace(tmp, args.pidfile)
        code = child.wait()
        if stopping:
            break
        print(f"[supervise] {cmd[:4]} ended with {code}; restart {starts} in "
              f"{args.delay:g} s", file=sys.stderr, flush=True)
        time.sleep(args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
