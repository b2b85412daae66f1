"""Start a VNF in a fresh sandbox: join its netns and cgroup, new PID/UTS/IPC namespaces.

Run as ``python -S _launch.py ...`` by the agent. The launcher forks the VNF as PID 1 of
its new PID namespace, prints that PID and exits at once, so the VNF is re-parented to
the agent (a child subreaper), exactly like a VNF that CRIU restored. Stdlib only.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
PR_SET_NO_NEW_PRIVS = 38


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nfvha-launch")
    ap.add_argument("--netns", required=True, help="path of the sandbox netns (/run/netns/..)")
    ap.add_argument("--cgroup-procs", action="append", default=[])
    ap.add_argument("--stdout", required=True, help="log file; opened O_APPEND so CRIU "
                    "does not pin its size and restores never fail on it")
    ap.add_argument("--hostname", default="vnf")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print("nfvha-launch: no command", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    for path in a.cgroup_procs:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    fd = os.open(a.netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        print(f"nfvha-launch: setns({a.netns}): {os.strerror(err)}", file=sys.stderr)
        return 1
    os.close(fd)
    if libc.unshare(CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC) != 0:
        err = ctypes.get_errno()
        print(f"nfvha-launch: unshare: {os.strerror(err)}", file=sys.stderr)
        return 1
    log_fd = os.open(a.stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    pid = os.fork()
    if pid:
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)
    try:
        socket.sethostname(a.hostname)
        os.setsid()
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # not the agent's elevated priority
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.chdir(a.workdir)
        # No setuid binary or file capability can give the VNF more privileges than it
        # starts with (inherited by its children; CRIU restores the flag).
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": "C.UTF-8", "HOME": "/root", "PYTHONUNBUFFERED": "1"}
        for kv in a.env:
            k, _, v = kv.partition("=")
            env[k] = v
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        os.write(2, f"nfvha-launch: cannot start {cmd[0]!r}: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
