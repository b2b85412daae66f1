"""A VNF's HA state and the transitions between them: one table, one check.

Every write of a VNF record goes through the manager's ``_update_vnf``, which calls
``check_transition`` on the state before and after the change, inside the store's
compare-and-set (``StateStore.update``): a write computed from a state another writer has
changed meanwhile is recomputed from the new one and checked again, so a transition is
judged against the state it actually leaves. A change the table does not allow raises
``IllegalTransition`` and nothing is written: a late write of a superseded action (a
recovery that finishes after a terminate) cannot resurrect a VNF.

Writes that keep the state (a new host or backup list, a crash-loop streak) are not
transitions and are always allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from nfvha.errors import PROBLEM_PREFIX, NfvhaError

__all__ = ["TRANSITIONS", "IllegalTransition", "VnfState", "check_transition"]


class VnfState(StrEnum):
    """The HA state of a VNF instance, as stored in its record and shown as ``haState``."""

    NOT_INSTANTIATED = "NOT_INSTANTIATED"
    INSTANTIATING = "INSTANTIATING"
    ACTIVE = "ACTIVE"
    RECOVERING = "RECOVERING"
    MOVING = "MOVING"  # a planned move (nfvha extension): final dump, restore elsewhere
    FAILED = "FAILED"
    TERMINATING = "TERMINATING"


S = VnfState

#: ``{from: {to: who triggers it}}``: the only state changes the manager may write.
TRANSITIONS: Mapping[VnfState, Mapping[VnfState, str]] = {
    S.NOT_INSTANTIATED: {
        S.INSTANTIATING: "instantiate (operator)",
    },
    S.INSTANTIATING: {
        S.ACTIVE: "instantiate done; or reconcile finds it running after a manager restart",
        S.NOT_INSTANTIATED: "instantiate failed (rolled back)",
        S.TERMINATING: "terminate during instantiate (operator)",
    },
    S.ACTIVE: {
        S.RECOVERING: "a failure detected (process exit, hang, host loss) or a heal",
        S.MOVING: "move (operator)",
        S.FAILED: "no strategy left (e.g. no host can take it)",
        S.TERMINATING: "terminate (operator)",
    },
    S.RECOVERING: {
        S.ACTIVE: "recovered; or reconcile finds it running",
        S.FAILED: "every strategy failed",
        S.TERMINATING: "terminate during a recovery (operator)",
    },
    S.MOVING: {
        S.ACTIVE: "moved, or put back on its source host",
        S.RECOVERING: "the move failed beyond putting it back: recovery takes over",
        S.TERMINATING: "terminate during a move (operator)",
    },
    S.FAILED: {
        S.RECOVERING: "a retry (a replica host came back) or a heal",
        S.ACTIVE: "reconcile finds it running after all",
        S.TERMINATING: "terminate (operator)",
    },
    S.TERMINATING: {
        S.NOT_INSTANTIATED: "terminate done",
    },
}


class IllegalTransition(NfvhaError):
    """A state change the transition table does not allow (nothing was written)."""

    problem_type = PROBLEM_PREFIX + "illegal-transition"

    def __init__(self, vnf_id: str, before: str = "", after: str = "") -> None:
        if not before and not after:  # rebuilt from a problem answer: the text is whole
            super().__init__(vnf_id)
        else:
            allowed = ", ".join(sorted(TRANSITIONS.get(VnfState(before), {}))) \
                if before in VnfState.__members__ else "nothing (unknown state)"
            super().__init__(f"VNF {vnf_id}: {before} -> {after} is not a transition nfvha "
                             f"makes (from {before}: {allowed or 'none'})")
        self.vnf_id, self.before, self.after = vnf_id, before, after


def check_transition(vnf_id: str, before: str | None, after: str | None) -> None:
    """Raise ``IllegalTransition`` unless ``before -> after`` is in the table. A record
    being created (no ``before``) must start NOT_INSTANTIATED; keeping the state is no
    transition."""
    if after is None or before == after:
        return
    if before is None:
        if after != VnfState.NOT_INSTANTIATED:
            raise IllegalTransition(vnf_id, "(none)", after)
        return
    try:
        allowed = TRANSITIONS[VnfState(before)]
        ok = VnfState(after) in allowed
    except ValueError:
        ok = False
    if not ok:
        raise IllegalTransition(vnf_id, before, after)
