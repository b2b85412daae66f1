"""The forwarder's reader of a restored VNF's receive queue: it asks the VNF's agent.

The forwarder cannot see the queue itself (the socket is in the VNF's netns on another
host); the agent there reads it cheaply from ``/proc`` and answers
``GET /v1/instances/{id}/rx-queue``. The forwarder calls with the cluster token, or its
``forwarder`` certificate with TLS (which the agent admits for this read only).

Each replay gets a client (and connection) of its own, closed when the replay and its
drain end: a connection kept from an earlier replay may lead to an agent process that
is gone (its host crashed and came back), and every reading on it timed out (a replay
of the e2e crash test ran 2 s at the floor rate without one reading).
"""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from nfvha.dataplane.pacing import ProbeError
from nfvha.wire import RxQueue

__all__ = ["AgentQueueProbe"]

#: Answers that asking again will not change: refused, no such instance or route (an
#: older agent), not running, the query refused, the host unable to read it.
_FINAL = frozenset({400, 401, 403, 404, 405, 409, 422, 503})


class AgentQueueProbe:
    """Reads the receive queue of ``instance_id``'s UDP socket on ``port`` from its agent
    at ``agent_url`` (a ``nfvha.dataplane.pacing.QueueProbe``)."""

    def __init__(self, http: httpx.AsyncClient, agent_url: str, instance_id: str, port: int,
                 token: str = "") -> None:
        self.http = http  # this probe's own: closed by aclose
        self.url = f"{agent_url.rstrip('/')}/v1/instances/{instance_id}/rx-queue"
        self.port = port
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def read(self, below: int | None, wait: float) -> RxQueue:
        params: dict[str, Any] = {"port": self.port}
        if below is not None:
            params.update(below=below, wait_ms=round(wait * 1000, 1))
        try:
            # An answer takes a millisecond; one that takes a second is from a host too
            # busy to pace by: after a few the pacer goes on at its fixed rate.
            r = await self.http.get(self.url, params=params, headers=self._headers,
                                    timeout=httpx.Timeout(wait + 1.0, connect=0.5))
        except httpx.HTTPError as exc:
            raise ProbeError(f"agent {self.url}: {type(exc).__name__}: {exc}") from exc
        if r.status_code >= 300:
            detail = r.text[:300]
            try:
                body = r.json()
                if isinstance(body, dict):
                    detail = str(body.get("detail") or body.get("title") or detail)
            except ValueError:
                pass
            raise ProbeError(f"agent {self.url}: {r.status_code} {detail}",
                             final=r.status_code in _FINAL)
        try:
            return RxQueue.model_validate_json(r.content)
        except ValidationError as exc:
            raise ProbeError(f"agent {self.url}: unexpected answer: {exc}", final=True) from exc

    async def aclose(self) -> None:
        await self.http.aclose()
