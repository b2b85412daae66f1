"""Active fencing (STONITH): power a lost host off through a fence agent, and confirm it.

Self-fencing by lease (``nfvha.ha.fault``) trusts the lost host to stop itself; a fence
agent does not: it cuts power (IPMI, Redfish, a PDU, a switch port) from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nfvha.errors import ConfigError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "FenceAgentDriver",
    "FenceDriver",
    "FenceResult",
    "load_fence_config",
]

#: Hard limit on one agent invocation; ``off`` makes two (off, then status).
DEFAULT_TIMEOUT_S = 10.0

# Exit codes of the fence-agents API (doc/FenceAgentAPI.md): "status" exits 0 when the
# plug is ON, 2 when it is OFF, anything else when the device could not be asked.
# (lib/fencing.py.py's EC_* constants are messages only: fail() always exits 1.)
_EXIT_ON = 0
_EXIT_OFF = 2

# Option names that carry secrets: never echoed in a detail, a repr or an exception.
_SECRET_KEY = re.compile(r"passw|secret|token|community|kg$")
_OPTION_KEY = re.compile(r"[a-z_][a-z0-9_-]*")
# fencing.py's logging prefix, "2026-01-02 03:04:05,678 ERROR: ", says nothing useful here.
_LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
_DETAIL_LINES = 3
_DETAIL_CHARS = 400
_SEARCH_DIRS = ("/usr/sbin", "/sbin")


@dataclass(frozen=True)
class FenceResult:
    """What one fencing call found. ``ok`` is True only when the host is confirmed OFF.

    ``status`` is the power state the agent last reported ("off", "on") or "unknown"
    when it could not tell; ``detail`` is one sentence for logs and operators.
    """

    host: str
    action: str
    ok: bool
    status: str
    detail: str
    driver: str
    duration_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class FenceDriver(Protocol):
    """Powers one host off. Implementations return a result; they never raise for a
    device that fails or does not answer, since the caller decides what an unconfirmed
    fence means (usually: do not restore the host's VNFs elsewhere yet)."""

    name: str

    async def off(self) -> FenceResult:
        """Power the host off and confirm it is off."""
        ...

    async def status(self) -> FenceResult:
        """Ask the device whether the host is powered off."""
        ...


@dataclass(frozen=True)
class _Run:
    """One agent invocation: exit code (None on timeout) and the tail of its output."""

    returncode: int | None
    tail: str


class FenceAgentDriver(FenceDriver):
    """Runs a ClusterLabs fence agent (fence_ipmilan, fence_redfish, ...) for one host.

    The agent is called the way Pacemaker's fencer calls it (doc/FenceAgentAPI.md): no
    arguments, one ``key=value`` line per option on stdin, the last value of a key
    winning; ``action`` is written last so no option can override it. ``off`` is the
    agent's ``action=off`` and then ``action=status``: only a status of OFF (exit 2)
    counts as fenced ("timeout is a failure, not success", same document).

    Each invocation runs in a session of its own and gets ``timeout_s``; past it the whole
    process group (the agent and e.g. its ipmitool) is SIGKILLed.
    """

    def __init__(self, host: str, agent: str | Sequence[str], options: Mapping[str, str],
                 *, timeout_s: float = DEFAULT_TIMEOUT_S, verify: bool = True) -> None:
        self.host = host
        self.argv = [agent] if isinstance(agent, str) else list(agent)
        if not self.argv:
            raise ConfigError(f"fence agent for host {host!r} is an empty command")
        for key, value in options.items():
            try:
                _check_option(key, value)
            except ValueError as exc:
                raise ConfigError(f"fence agent for host {host!r}: {exc}") from None
        self.options = dict(options)
        self.timeout_s = timeout_s
        # fencing.py-based agents exit 0 from ``off`` only once they read the plug OFF
        # (fence_action waits for it); ``verify`` asks once more, for agents that do not.
        self.verify = verify
        self.name = _agent_name(self.argv)

    def __repr__(self) -> str:
        shown = [f"{k}=***" if _SECRET_KEY.search(k) else f"{k}={v}"
                 for k, v in self.options.items()]
        return (f"FenceAgentDriver(host={self.host!r}, agent={self.name!r}, "
                f"options=[{', '.join(shown)}], timeout_s={self.timeout_s})")

    async def status(self) -> FenceResult:
        start = time.monotonic()
        run = await self._run("status")
        state = _power_state(run)
        return self._result("status", state, self._describe("status", run, state), start)

    async def off(self) -> FenceResult:
        start = time.monotonic()
        run = await self._run("off")
        if run.returncode != 0:
            return self._result("off", "unknown", self._describe("off", run, None), start)
        if not self.verify:
            return self._result("off", "off", f"{self.name} powered {self.host} off (its off "
                                "exits 0 only once the plug reads OFF)", start)
        check = await self._run("status")
        state = _power_state(check)
        if state == "off":
            detail = f"{self.name} powered {self.host} off; status confirms OFF"
        elif state == "on":
            detail = (f"{self.name} off exited 0 but status still reports ON"
                      f"{_suffix(check.tail)}")
        else:
            detail = (f"{self.name} off exited 0 but status could not confirm it: "
                      f"{self._describe('status', check, None)}")
        return self._result("off", state, detail, start)

    def _result(self, action: str, state: str, detail: str, start: float) -> FenceResult:
        return FenceResult(host=self.host, action=action, ok=state == "off", status=state,
                           detail=self._scrub(detail), driver=self.name,
                           duration_s=round(time.monotonic() - start, 3))

    def _describe(self, action: str, run: _Run, state: str | None) -> str:
        if run.returncode is None:
            return f"{self.name} {action} timed out after {self.timeout_s} s{_suffix(run.tail)}"
        if state in ("on", "off"):
            return f"{self.name} {action}: host {self.host} is {state.upper()}"
        return f"{self.name} {action} exited {run.returncode}{_suffix(run.tail)}"

    def _scrub(self, text: str) -> str:
        """Replace any secret option's value, in case an agent echoed it (verbose mode)."""
        for key, value in self.options.items():
            if value and _SECRET_KEY.search(key):
                text = text.replace(value, "***")
        return text

    async def _run(self, action: str) -> _Run:
        payload = "".join(f"{k}={v}\n" for k, v in self.options.items()) + f"action={action}\n"
        # fencing.py-based agents are Python: silence their DeprecationWarnings, which
        # would otherwise crowd the real error out of the output's tail.
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "LC_ALL": "C"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
        except OSError as exc:
            return _Run(127, f"cannot start {self.argv[0]}: {exc.strerror}")
        assert proc.stdin and proc.stdout and proc.stderr
        out: list[bytes] = []
        err: list[bytes] = []
        readers = asyncio.gather(_drain(proc.stdout, out), _drain(proc.stderr, err))
        timed_out = False
        try:
            async with asyncio.timeout(self.timeout_s):
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    proc.stdin.write(payload.encode())
                    await proc.stdin.drain()
                proc.stdin.close()
                # Shielded: on timeout the readers go on and collect what the agent said.
                await asyncio.shield(readers)
                await proc.wait()
        except TimeoutError:
            timed_out = True
            _kill_group(proc.pid)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await asyncio.shield(readers)
                    await proc.wait()
        finally:
            if proc.returncode is None:  # cancelled, or not reaped after the kill
                _kill_group(proc.pid)
            readers.cancel()
        returncode = None if timed_out else proc.returncode
        return _Run(returncode, _tail(out, err, failed=returncode != 0))


def _power_state(run: _Run) -> str:
    if run.returncode == _EXIT_OFF:
        return "off"
    if run.returncode == _EXIT_ON:
        return "on"
    return "unknown"


async def _drain(stream: asyncio.StreamReader, sink: list[bytes]) -> None:
    while chunk := await stream.read(65536):
        sink.append(chunk)


def _kill_group(pgid: int) -> None:
    # The group outlives its leader while any member lives, so its id cannot be reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(out: list[bytes], err: list[bytes], *, failed: bool) -> str:
    """The last lines worth showing: stderr when the agent failed and said why there."""
    def lines(chunks: list[bytes]) -> list[str]:
        text = b"".join(chunks).decode(errors="replace")
        return [_LOG_STAMP.sub("", ln).strip() for ln in text.splitlines() if ln.strip()]

    err_lines, out_lines = lines(err), lines(out)
    chosen = err_lines if failed and err_lines else out_lines + err_lines
    return " | ".join(chosen[-_DETAIL_LINES:])[-_DETAIL_CHARS:]


def _suffix(tail: str) -> str:
    return f": {tail}" if tail else ""


def _agent_name(argv: Sequence[str]) -> str:
    """``fence_ipmilan`` for a path, the module's last part for ``python -m pkg.mod``."""
    if "-m" in argv[1:-1]:
        return argv[argv.index("-m", 1) + 1].rsplit(".", 1)[-1]
    scripts = [a for a in argv[1:] if a.endswith(".py")]
    if scripts and Path(argv[0]).name.startswith("python"):
        return Path(scripts[0]).stem  # python [-S] path/to/agent.py
    return Path(argv[0]).name


def _check_option(key: str, value: str) -> None:
    """An option must survive the line protocol intact and must not pick the action."""
    if not _OPTION_KEY.fullmatch(key):
        raise ValueError(f"option name {key!r} is not valid: use lower-case letters, digits, "
                         "'_' and '-', starting with a letter or '_' (e.g. 'ip', 'lanplus')")
    if key in ("action", "option"):
        raise ValueError(f"option {key!r} is set by nfvha for each call (off, status); "
                         "remove it")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"option {key!r} has a line break or NUL in its value; the agent "
                         "reads one option per line, so remove it")


# -- configuration -----------------------------------------------------------------


class _HostFence(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | list[str]
    options: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(DEFAULT_TIMEOUT_S, gt=0, le=600)
    verify: bool = True  # ask ``status`` after ``off`` (fencing.py agents already wait)

    @field_validator("agent")
    @classmethod
    def _resolve_agent(cls, agent: str | list[str]) -> str | list[str]:
        if isinstance(agent, list):
            if not agent or not all(agent):
                raise ValueError("an argv list must be non-empty, with no empty items")
            return [_resolve_executable(agent[0]), *agent[1:]]
        return _resolve_executable(agent)

    @field_validator("options", mode="before")
    @classmethod
    def _options_as_text(cls, options: Any) -> Any:
        """Numbers and booleans become the text the agent parses (bool: "1"/"0")."""
        if not isinstance(options, dict):
            return options  # pydantic reports the wrong type
        return {k: _option_text(v) for k, v in options.items()}

    @field_validator("options")
    @classmethod
    def _check_options(cls, options: dict[str, str]) -> dict[str, str]:
        for key, value in options.items():
            _check_option(key, value)
        return options


class _FenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hosts: dict[str, _HostFence]


def _option_text(value: Any) -> Any:
    if isinstance(value, bool):  # before int: bool is an int
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    return value  # text stays; anything else is refused as "not a valid string"


def _resolve_executable(agent: str) -> str:
    if not agent:
        raise ValueError("the agent is empty: name a fence agent, e.g. fence_ipmilan")
    if "/" in agent:
        if not os.path.isabs(agent):
            raise ValueError(f"agent {agent!r} is a relative path: give an absolute path "
                             "or a bare name found on PATH or in /usr/sbin")
        if not (os.path.isfile(agent) and os.access(agent, os.X_OK)):
            raise ValueError(f"agent {agent!r} is not an executable file: install it or "
                             "fix the path")
        return agent
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SEARCH_DIRS])
    found = shutil.which(agent, path=search)
    if found is None:
        raise ValueError(f"agent {agent!r} is neither on PATH nor in /usr/sbin: install it "
                         "(Debian: fence-agents, or fence-agents-<name> on Debian 13; "
                         "scripts/setup.sh does) or give an absolute path")
    return found


def _config_error(source: str, exc: ValidationError) -> ConfigError:
    """One line per problem, naming host and field; never the offending values, which
    may be passwords."""
    problems = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc[:1] == ["hosts"] and len(loc) >= 2:
            where = f"host {loc[1]!r}, field {'.'.join(loc[2:]) or '(host entry)'}"
        else:
            where = f"field {'.'.join(loc) or '(top level)'}"
        msg = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = ("unknown key; remove it (a host takes agent, options, timeout; the file "
                   "takes hosts)")
        elif err["type"] == "missing":
            msg = "required; add it"
        problems.append(f"{where}: {msg}")
    return ConfigError(f"fence config {source}: " + "; ".join(problems))


def load_fence_config(source: str | Path | Mapping[str, Any]) -> dict[str, FenceAgentDriver]:
    """Build one driver per host from a YAML file (or the same data as a mapping)::

        hosts:
          h1: {agent: fence_ipmilan, timeout: 10,
               options: {ip: 10.0.0.5, username: admin, password: secret, lanplus: true}}

    ``agent`` is a bare name (searched on PATH, then /usr/sbin), an absolute path, or an
    argv list; option values become text (booleans "1"/"0"). Raises ConfigError.
    """
    if isinstance(source, Mapping):
        data: Any = source
        where = "(mapping)"
    else:
        where = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read fence config {where}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            # Not str(exc): its snippet of the file could show a password.
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"fence config {where} is not valid YAML{at}: {problem}"
                              ) from None
    try:
        config = _FenceConfig.model_validate(data)
    except ValidationError as exc:
        # from None: pydantic's own message quotes the input, passwords included.
        raise _config_error(where, exc) from None
    return {
        host: FenceAgentDriver(host, h.agent, h.options, timeout_s=h.timeout, verify=h.verify)
        for host, h in config.hosts.items()
    }
