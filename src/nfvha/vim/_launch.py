"""Start a VNF in a fresh sandbox: join its netns and cgroup, new PID/UTS/IPC/mount
namespaces, a private root, fewer capabilities, no new privileges, a seccomp filter.

Run as ``python -S _launch.py ...`` by the agent. The launcher forks the VNF as PID 1 of
its new PID namespace, prints that PID and exits at once, so the VNF is re-parented to
the agent (a child subreaper), exactly like a VNF that CRIU restored. Stdlib only
(libseccomp through ctypes).

**The private root** (``--root``): a skeleton directory the agent made (empty mount
points and the host's ``/bin -> usr/bin`` style links), bind-mounted onto itself and
made the root with ``pivot_root``; the host's system directories are bound read-only,
``/tmp`` (with ``/run`` and ``/dev/shm``) is a fresh tmpfs, ``/dev`` holds only a few host
device nodes, ``/proc`` is the new PID namespace's own (``/proc/sys`` read-only), ``/sys``
read-only. Every host path bound in (system
directories, the work directory, volumes, the stdout file, masks) is a *bind* CRIU
records as external by its path inside, so the same images restore on any host where
those paths exist (``Sandbox.external_mounts``). The tmpfs contents travel with the
checkpoint: they are the VNF's state too.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNS = 0x00020000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CAP_LAST = 40  # CAP_CHECKPOINT_RESTORE (Linux 5.9+)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(os.uname().machine, 155)

#: System calls no network function needs and a hostile one would want (Docker's default
#: profile blocks the same): refused with EPERM, the caller sees a plain failure.
SECCOMP_DENY = (
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "swapon", "swapoff", "reboot", "kexec_load",
    "kexec_file_load", "init_module", "finit_module", "delete_module", "acct",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "bpf", "perf_event_open",
    "userfaultfd", "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv",
    "process_vm_writev", "open_by_handle_at", "name_to_handle_at", "unshare", "setns",
    "iopl", "ioperm", "quotactl", "lookup_dcookie", "syslog", "vhangup", "uselib",
    "nfsservctl", "kcmp")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    _check(_libc.mount(src.encode() if src else None, target.encode(),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None), f"mount {target}")


def _bind(src: str, target: str, *, read_only: bool) -> None:
    _mount(src, target, None, MS_BIND)
    if read_only:
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def enter_private_root(root: str, binds: list[tuple[str, str, str]], size: str) -> None:
    """Make ``root`` this mount namespace's root (see the module docstring).

    ``binds`` are ``(host path, path inside, mode)`` with mode ``ro``, ``rw`` or ``dev``
    (a device node: bound as it is, since a read-only remount would add ``nodev``). One
    tmpfs, at ``/tmp``, holds ``/run`` and ``/dev/shm`` too (bound from ``/tmp/.run`` and
    ``/tmp/.shm``): CRIU archives each tmpfs with a tar process while the VNF is frozen,
    so one costs a third of three.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing propagates back to the host
    _mount(root, root, None, MS_BIND)
    for src, dst, mode in binds:
        if mode == "dev":
            _mount(src, root + dst, None, MS_BIND)
        else:
            _bind(src, root + dst, read_only=mode == "ro")
    _mount("tmpfs", f"{root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}")
    for sub, mode_bits, inside in ((".run", 0o755, "/run"), (".shm", 0o1777, "/dev/shm")):
        os.mkdir(f"{root}/tmp/{sub}")
        os.chmod(f"{root}/tmp/{sub}", mode_bits)
        _mount(f"{root}/tmp/{sub}", root + inside, None, MS_BIND)
    _mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for entry in ("sys", "sysrq-trigger"):  # root-owned: writable by uid 0 without capabilities
        if os.path.exists(f"{root}/proc/{entry}"):
            _bind(f"{root}/proc/{entry}", f"{root}/proc/{entry}", read_only=True)
    _mount("sysfs", f"{root}/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/")
    _mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def limit_capabilities(keep: list[int], run_as: tuple[int, int] | None) -> None:
    """Drop every other capability from the bounding set (what any later exec can get);
    with ``run_as``, switch user keeping ``keep`` as ambient capabilities, so a non-root
    VNF can still, say, bind port 53 without being root."""
    for cap in range(CAP_LAST + 1):
        if cap not in keep:
            rc = _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            if rc != 0 and ctypes.get_errno() != 22:  # EINVAL: this kernel has fewer
                _check(rc, f"drop capability {cap}")
    if run_as is None:
        return
    uid, gid = run_as
    _check(_libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "keep capabilities")
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    mask = [0, 0]
    for cap in keep:
        mask[cap // 32] |= 1 << (cap % 32)
    data = (_CapData * 2)(*[_CapData(m, m, m) for m in mask])
    _check(_libc.capset(ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data),
           "capset")
    for cap in keep:
        _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0), f"ambient {cap}")


def load_seccomp(deny: tuple[str, ...] = SECCOMP_DENY) -> None:
    """A seccomp filter refusing ``deny`` with EPERM, through libseccomp (the library
    Docker, runc and systemd use); the filter survives exec and CRIU restores it."""
    try:
        lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError as exc:
        raise OSError(f"libseccomp is not installed ({exc}); install libseccomp2 or set "
                      "security.seccomp: unconfined") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                     ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x7FFF0000)  # SCMP_ACT_ALLOW
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name in deny:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue  # not on this architecture
            rc = lib.seccomp_rule_add(ctx, 0x00050000 | 1, nr, 0)  # SCMP_ACT_ERRNO(EPERM)
            if rc < 0:
                raise OSError(-rc, f"seccomp rule for {name}")
        rc = lib.seccomp_load(ctx)
        if rc < 0:
            raise OSError(-rc, "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def restrict(a: argparse.Namespace) -> None:
    """The last step before exec, in this order: no new privileges (no setuid binary or
    file capability can give more than the VNF starts with; inherited, and CRIU restores
    it), the capability bounding set and user, then the seccomp filter."""
    if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    run_as = None
    if a.run_as:
        uid, _, gid = a.run_as.partition(":")
        run_as = (int(uid), int(gid or uid))
    if a.caps is not None:
        limit_capabilities([int(c) for c in a.caps.split(",") if c], run_as)
    if a.seccomp == "default":
        load_seccomp()


def join(a: argparse.Namespace, cmd: list[str]) -> int:
    """Run ``cmd`` inside the running VNF ``a.join``: its IPC, UTS, network, PID and mount
    namespaces (so its private root), with the VNF's own restrictions. For exec health
    probes: a probe is the VNFD's code, as untrusted as the VNF."""
    mine = os.readlink("/proc/self/ns/mnt")
    for ns in ("ipc", "uts", "net", "pid", "mnt"):
        path = f"/proc/{a.join}/ns/{ns}"
        if ns == "mnt" and os.readlink(path) == mine:
            continue  # a VNF without a private root
        fd = os.open(path, os.O_RDONLY)
        try:
            _check(_libc.setns(fd, 0), f"setns {ns}")
        finally:
            os.close(fd)
    pid = os.fork()  # the PID namespace applies to children only
    if pid:
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) & 0xFF
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "pdeathsig")
        os.chdir(a.workdir if os.path.isdir(a.workdir) else "/")
        restrict(a)
        os.execvp(cmd[0], cmd)
    except OSError as exc:
        os.write(2, f"nfvha-launch: cannot run {cmd[0]!r} in the sandbox: {exc}\n".encode())
    os._exit(127)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="nfvha-launch")
    ap.add_argument("--netns", help="path of the sandbox netns (/run/netns/..)")
    ap.add_argument("--join", type=int, help="run the command inside this running VNF")
    ap.add_argument("--cgroup-procs", action="append", default=[])
    ap.add_argument("--stdout", help="log file; opened O_APPEND so CRIU "
                    "does not pin its size and restores never fail on it")
    ap.add_argument("--hostname", default="vnf")
    ap.add_argument("--workdir", default="/")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE")
    ap.add_argument("--root", help="skeleton directory to make the private root")
    ap.add_argument("--bind", action="append", default=[],
                    help="SRC:DST:ro|rw|dev, host path bound into the private root")
    ap.add_argument("--tmpfs-size", default="64m")
    ap.add_argument("--caps", default=None, help="capability numbers to keep, comma-separated")
    ap.add_argument("--run-as", default=None, help="uid:gid")
    ap.add_argument("--seccomp", choices=("default", "unconfined"), default="unconfined")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        print("nfvha-launch: no command", file=sys.stderr)
        return 2
    if a.join:
        return join(a, cmd)
    if not a.netns or not a.stdout:
        print("nfvha-launch: --netns and --stdout are needed to start a VNF", file=sys.stderr)
        return 2
    libc = _libc
    binds = []
    for b in a.bind:
        src, dst, mode = b.rsplit(":", 2)
        binds.append((src, dst, mode))
    for path in a.cgroup_procs:
        with open(path, "w") as f:
            f.write(str(os.getpid()))
    fd = os.open(a.netns, os.O_RDONLY)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        print(f"nfvha-launch: setns({a.netns}): {os.strerror(err)}", file=sys.stderr)
        return 1
    os.close(fd)
    flags = CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | (CLONE_NEWNS if a.root else 0)
    if libc.unshare(flags) != 0:
        err = ctypes.get_errno()
        print(f"nfvha-launch: unshare: {os.strerror(err)}", file=sys.stderr)
        return 1
    if not a.root:
        log_fd = os.open(a.stdout, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    # The child reports a failure to set its sandbox up on this pipe; exec closes it.
    # So a VNF that cannot be contained is a start error, never a VNF that exits at once.
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid:
        os.close(err_w)
        with os.fdopen(err_r, "rb") as f:
            failure = f.read(4096).decode(errors="replace")
        if failure:
            os.waitpid(pid, 0)
            sys.stderr.write(failure)
            return 1
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()
        os._exit(0)
    os.close(err_r)
    try:
        socket.sethostname(a.hostname)
        if a.root:
            # The stdout file is bound in at /.stdout and opened there, so CRIU finds the
            # file on a mount of the VNF's own namespace.
            enter_private_root(a.root, [*binds, (a.stdout, "/.stdout", "rw")],
                               a.tmpfs_size)
            log_fd = os.open("/.stdout", os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        os.setsid()
        os.setpriority(os.PRIO_PROCESS, 0, 0)  # not the agent's elevated priority
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Nothing of the launcher's or the agent's leaks into the VNF (and into its
        # checkpoints, where a file of the host would not be found on restore).
        os.closerange(3, err_w)
        os.closerange(err_w + 1, 1 << 16)
        os.chdir(a.workdir)
        restrict(a)
        env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
               "LANG": "C.UTF-8", "HOME": a.workdir if a.root else "/root",
               "PYTHONUNBUFFERED": "1"}
        for kv in a.env:
            k, _, v = kv.partition("=")
            env[k] = v
    except OSError as exc:
        os.write(err_w, f"nfvha-launch: cannot set up the sandbox: {exc}\n".encode())
        os._exit(126)
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        os.write(2, f"nfvha-launch: cannot start {cmd[0]!r}: {exc}\n".encode())
    os._exit(127)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
