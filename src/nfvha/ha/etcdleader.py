"""Keep etcd's raft leader off the host of the manager that leads.

A manager cluster usually runs an etcd member beside each manager. When one host runs
both the leading manager and etcd's raft leader and loses power, etcd must first elect a
new raft leader, and a new raft leader extends every lease by its election timeout (so
that no lease expires for the election's sake): the manager's leader key then outlives
its dead holder by an election plus that extension, about 1.5 s more than a manager
crash alone costs at 1 s leases. Moving etcd's leadership to a member on another host
(etcd's MoveLeader, what `etcdctl move-leader` does) makes a power cut of the leader's
host cost what a manager crash costs. The leading manager checks every few seconds;
which member is local is found by address: the member whose client URL names the host
of the manager's own advertised URL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

from nfvha.store.base import StoreError
from nfvha.store.etcd import EtcdClient

__all__ = ["MemberStatus", "keep_leader_away", "member_statuses"]

log = logging.getLogger(__name__)

#: Raft entries a member may be behind the leader and still be given the leadership.
CAUGHT_UP = 50


@dataclass(frozen=True)
class MemberStatus:
    endpoint: str
    member_id: int
    leader_id: int  # the raft leader as this member knows it
    raft_index: int = 0

    @property
    def is_leader(self) -> bool:
        return self.member_id == self.leader_id


def member_statuses(client: EtcdClient) -> list[MemberStatus]:
    """Each member that answers its status (one round trip each; the silent are left
    out)."""
    out = []
    for endpoint in client.endpoints:
        try:
            st = client.call_at(endpoint, "/maintenance/status", {})
        except StoreError:
            continue
        out.append(MemberStatus(endpoint, int(st.get("header", {}).get("member_id", 0)),
                                int(st.get("leader", 0)), int(st.get("raftIndex", 0))))
    return out


def _host(url: str) -> str:
    return urlsplit(url).hostname or ""


def keep_leader_away(client: EtcdClient, own_url: str) -> str | None:
    """If etcd's raft leader is the member on ``own_url``'s host, move the leadership to
    another member that answers; returns what was done (None: nothing to do)."""
    here = _host(own_url)
    statuses = member_statuses(client)
    leader = next((s for s in statuses if s.is_leader), None)
    if leader is None or _host(leader.endpoint) != here:
        return None
    # Only to a member that follows this raft leader and has caught up with its log: a
    # lagging or cut-off one would stall etcd while it catches up.
    others = [s for s in statuses if s.member_id != leader.member_id
              and _host(s.endpoint) != here and s.leader_id == leader.member_id
              and s.raft_index >= leader.raft_index - CAUGHT_UP]
    if not others:
        return None  # nowhere to move it: no other member in the cluster answered
    target = others[0]
    client.call_at(leader.endpoint, "/maintenance/transfer-leadership",
                   {"targetID": str(target.member_id)})
    return f"etcd leadership moved from {leader.endpoint} to {target.endpoint}"
