"""The forwarder's reader of a restored VNF's receive queue: it asks the VNF's agent.

The forwarder cannot see the queue itself (the socket is in the VNF's netns on another
host); the agent there reads it cheaply from ``/proc`` and answers
``GET /v1/instances/{id}/rx-queue``. The forwarder calls with the cluster token, or its
``forwarder`` certificate with TLS (which the agent admits for this read only).

A replay at 50,000 datagrams/s into a default 208 KiB socket buffer takes some 500
readings a second, each on the forwarder's one core that also sends the replay. With
httpx a reading cost about 1 ms of its CPU (measured here, client side), half of that
core; this speaks HTTP/1.1 with h11, the protocol engine under httpx and uvicorn, on a
connection of its own: 0.3 ms. Each replay gets its own probe and connections (one per
reading under way, kept alive between readings), closed when the replay and its drain
end: none is kept for a later replay, whose agent may be gone with its host by then.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from urllib.parse import urlencode, urlsplit

import h11
from pydantic import ValidationError

from nfvha.dataplane.pacing import ProbeError
from nfvha.wire import RxQueue

__all__ = ["AgentQueueProbe"]

_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter, h11.Connection]

#: Answers that asking again will not change: refused, no such instance or route (an
#: older agent), not running, the query refused, the host unable to read it.
_FINAL = frozenset({400, 401, 403, 404, 405, 409, 422, 503})
_CONNECT_TIMEOUT = 0.5
_MAX_ANSWER = 1 << 16


class AgentQueueProbe:
    """Reads the receive queue of ``instance_id``'s UDP socket on ``port`` from its agent
    at ``agent_url`` (a ``nfvha.dataplane.pacing.QueueProbe``); ``ssl_context`` for an
    ``https`` agent (with TLS: the forwarder's client context)."""

    def __init__(self, agent_url: str, instance_id: str, port: int, *, token: str = "",
                 ssl_context: ssl.SSLContext | None = None) -> None:
        u = urlsplit(agent_url)
        self._host = u.hostname or ""
        self._tls = (ssl_context or ssl.create_default_context()) if u.scheme == "https" \
            else None
        self._tcp_port = u.port or (443 if self._tls else 80)
        self.url = f"{agent_url.rstrip('/')}/v1/instances/{instance_id}/rx-queue"
        self._path = f"{u.path.rstrip('/')}/v1/instances/{instance_id}/rx-queue"
        self.port = port
        self._headers = [("Host", u.netloc), ("Accept", "application/json"),
                         *([("Authorization", f"Bearer {token}")] if token else [])]
        self._idle: list[_Conn] = []  # open connections, between two readings

    async def read(self, below: int | None, wait: float) -> RxQueue:
        query: dict[str, int | float] = {"port": self.port}
        if below is not None:
            query.update(below=below, wait_ms=round(wait * 1000, 1))
        try:
            # An answer takes a millisecond; one that takes a second is from a host too
            # busy to pace by: after a few the pacer goes on at its fixed rate.
            status, body = await asyncio.wait_for(
                self._get(f"{self._path}?{urlencode(query)}"), wait + 1.0)
        except (OSError, EOFError, TimeoutError, h11.ProtocolError) as exc:
            raise ProbeError(f"agent {self.url}: {type(exc).__name__}: {exc}") from exc
        if status >= 300:
            detail = body[:300].decode(errors="replace")
            try:
                problem = json.loads(body)
                if isinstance(problem, dict):
                    detail = str(problem.get("detail") or problem.get("title") or detail)
            except ValueError:
                pass
            raise ProbeError(f"agent {self.url}: {status} {detail}", final=status in _FINAL)
        try:
            return RxQueue.model_validate_json(body)
        except ValidationError as exc:
            raise ProbeError(f"agent {self.url}: unexpected answer: {exc}", final=True) from exc

    async def _get(self, target: str) -> tuple[int, bytes]:
        if self._idle:
            c = self._idle.pop()
        else:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                self._host, self._tcp_port, ssl=self._tls,
                server_hostname=self._host if self._tls else None), _CONNECT_TIMEOUT)
            c = (reader, writer, h11.Connection(h11.CLIENT))
        try:
            result = await self._exchange(c, target)
        except BaseException:
            c[1].close()  # failed or cancelled mid-answer: the connection is out of step
            raise
        if c[2].our_state is h11.DONE and c[2].their_state is h11.DONE:
            c[2].start_next_cycle()  # keep-alive
            self._idle.append(c)
        else:
            c[1].close()
        return result

    async def _exchange(self, c: _Conn, target: str) -> tuple[int, bytes]:
        reader, writer, conn = c
        writer.write(conn.send(h11.Request(method="GET", target=target,
                                           headers=self._headers)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        status, body = 0, bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(1 << 16)
                if not data:
                    raise EOFError("the agent closed the connection")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > _MAX_ANSWER:
                    raise EOFError("answer too long")
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("the agent closed the connection")
        return status, bytes(body)

    async def aclose(self) -> None:
        """Close the idle connections (one in use is closed by its cancelled reading)."""
        for _, writer, _ in self._idle:
            writer.close()
        self._idle.clear()
