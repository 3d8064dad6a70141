"""The job state machine: the only code that decides whether a job may change state."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .errors import FailedPrecondition
from .records import Job, JobEventType, JobStage, JobState, JobTransition

FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})

# Lease lengths (ClaimJob, StartJob, HeartbeatJob), microseconds.
DEFAULT_LEASE_US = 60_000_000
MIN_LEASE_US = 1_000_000
MAX_LEASE_US = 3_600_000_000
# Who expires leases, as the transitions' actor.
EXPIRY_ACTOR = "lease-expiry"
LEASE_EXPIRED = "LEASE_EXPIRED"


class Action(Enum):
    START = "StartJob"
    PROGRESS = "ReportJobProgress"
    SUCCEED = "SucceedJob"
    FAIL = "FailJob"
    CANCEL = "CancelJob"
    RETRY = "RetryJob"
    # Not a method: a claim whose caller left before its reply (cancelled, deadline) is undone.
    RELEASE = "ClaimJob (abandoned)"


# action -> (states it may leave, state it enters)
TRANSITIONS: dict[Action, tuple[frozenset[JobState], JobState]] = {
    Action.START: (frozenset({JobState.PENDING}), JobState.RUNNING),
    Action.PROGRESS: (frozenset({JobState.RUNNING}), JobState.RUNNING),
    Action.SUCCEED: (frozenset({JobState.RUNNING}), JobState.SUCCEEDED),
    Action.FAIL: (frozenset({JobState.PENDING, JobState.RUNNING}), JobState.FAILED),
    Action.CANCEL: (frozenset({JobState.PENDING, JobState.RUNNING}), JobState.CANCELLED),
    Action.RETRY: (frozenset({JobState.FAILED}), JobState.PENDING),
    Action.RELEASE: (frozenset({JobState.RUNNING}), JobState.PENDING),
}


def is_final(job: Job) -> bool:
    """Final: nothing more will happen (WatchJob ends here)."""
    return job.state in FINAL_STATES or (job.state == JobState.FAILED and job.attempt >= job.max_attempts)


def apply(
    job: Job,
    action: Action,
    now: int,
    *,
    stage: int = 0,
    progress: float | None = None,
    message: str = "",
    artifacts: Sequence[str] | None = None,
    lease: Lease | None = None,
    ignore_attempt_limit: bool = False,
) -> tuple[Job, JobTransition, JobEventType]:
    """The job after `action`, the transition to record and the event type; or FAILED_PRECONDITION
    (LEASE_LOST before any other check when `lease` names a token that is not the job's lease)."""
    if lease is not None:
        lease.check(job)
    allowed, target = TRANSITIONS[action]
    current = JobState(job.state)
    if current not in allowed:
        raise FailedPrecondition(
            f"cannot {action.value} job {job.id!r} in state {current.name} "
            f"(allowed from: {', '.join(sorted(s.name for s in allowed))})",
            reason="INVALID_JOB_TRANSITION",
            metadata={
                "resource": f"jobs/{job.id}",
                "from_state": current.name,
                "to_state": target.name,
                "method": action.value,
            },
        )
    if action is Action.RETRY and job.attempt >= job.max_attempts and ignore_attempt_limit:
        message = f"ignore_attempt_limit: re-run after {job.attempt} of {job.max_attempts} attempts" + (
            f"; {message}" if message else ""
        )
    elif action is Action.RETRY and job.attempt >= job.max_attempts:
        raise FailedPrecondition(
            f"job {job.id!r} has used all {job.max_attempts} attempts",
            reason="RETRIES_EXHAUSTED",
            metadata={"resource": f"jobs/{job.id}", "attempt": str(job.attempt)},
        )
    changes: dict[str, Any] = {}
    if action is Action.START:
        changes = {"attempt": job.attempt + 1, "start_time": now, "end_time": 0, "progress_percent": 0.0,
                   "error_message": ""}  # fmt: skip
    elif action is Action.PROGRESS:
        if stage:
            changes["stage"] = stage
        if progress is not None:
            changes["progress_percent"] = progress
    elif action is Action.SUCCEED:
        changes = {"stage": JobStage.DONE, "progress_percent": 100.0, "end_time": now,
                   "artifacts": tuple(artifacts or ())}  # fmt: skip
    elif action is Action.FAIL:
        changes = {"error_message": message, "end_time": now}
    elif action is Action.CANCEL:
        changes = {"end_time": now}
    elif action is Action.RETRY:
        changes = {"stage": JobStage.UNSPECIFIED, "progress_percent": 0.0, "end_time": 0}
    elif action is Action.RELEASE:  # as if never claimed: the attempt is given back
        changes = {"attempt": max(job.attempt - 1, 0), "start_time": 0, "stage": JobStage.UNSPECIFIED,
                   "progress_percent": 0.0}  # fmt: skip
    new = job._replace(state=target, update_time=now, transitions=(), **changes)
    new = _leased(job, new, lease, now)
    event_type = JobEventType.PROGRESS if action is Action.PROGRESS else JobEventType.STATE_CHANGED
    transition = JobTransition(
        from_state=int(current), to_state=int(target), stage=new.stage, message=message, time=now
    )
    return new, transition, event_type


def reprioritized(job: Job, priority: int, now: int, actor: str) -> tuple[Job, JobTransition | None]:
    """UpdateJob's change: the job with its new priority, and the transition to record (None when
    the priority is the one it had: nothing to tell watchers)."""
    if priority == job.priority:
        return job, None
    new = job._replace(priority=priority, update_time=now, transitions=())
    message = f"priority {job.priority} -> {priority}"
    return new, JobTransition(int(job.state), int(job.state), job.stage, message, now, actor=actor)


def token_hash(token: str) -> str:
    """What storage keeps of a lease token (and compares): its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A lease token: 192 random bits, URL-safe text."""
    return secrets.token_urlsafe(24)


@dataclass(frozen=True, slots=True)
class Lease:
    """What a write asks of its job's lease.

    `token_hash`: the hash of the token the caller presented; the job's lease must be that one
    (else LEASE_LOST). `grant_hash`: grant a new lease held by `holder` with this token hash.
    `renew`: extend the presented lease by `duration_us` (0: its current length)."""

    token_hash: str = ""
    grant_hash: str = ""
    holder: str = ""
    duration_us: int = 0
    renew: bool = False

    def check(self, job: Job) -> None:
        if self.token_hash and (not job.lease_token_hash or job.lease_token_hash != self.token_hash):
            raise lease_lost(job)


def lease_lost(job: Job) -> FailedPrecondition:
    state = JobState(job.state).name
    return FailedPrecondition(
        f"the lease token is not job {job.id!r}'s current lease (the job is {state}"
        + (f", leased to {job.lease_holder!r})" if job.lease_holder else ", with no lease)")
        + ": the lease expired or was replaced; stop working on this job",
        reason="LEASE_LOST",
        metadata={"resource": f"jobs/{job.id}", "state": state, "lease_holder": job.lease_holder},
    )


_NO_LEASE: dict[str, Any] = {"lease_holder": "", "lease_expire_time": 0, "lease_duration": 0, "lease_token_hash": ""}


def _leased(current: Job, new: Job, lease: Lease | None, now: int) -> Job:
    """`new` with its lease: none outside RUNNING; granted, renewed or kept otherwise."""
    if new.state != JobState.RUNNING:
        return new._replace(**_NO_LEASE) if new.lease_token_hash or new.lease_expire_time else new
    if lease is None:
        return new
    if lease.grant_hash:
        return new._replace(
            lease_holder=lease.holder,
            lease_duration=lease.duration_us,
            lease_expire_time=now + lease.duration_us,
            lease_token_hash=lease.grant_hash,
        )
    if lease.renew and lease.token_hash:
        duration = lease.duration_us or current.lease_duration or DEFAULT_LEASE_US
        return new._replace(lease_duration=duration, lease_expire_time=now + duration)
    return new


def heartbeat(job: Job, lease: Lease, now: int) -> Job:
    """The job with its lease renewed (no state change, no event); LEASE_LOST unless the lease is
    the caller's and the job RUNNING."""
    lease.check(job)
    if job.state != JobState.RUNNING:
        raise lease_lost(job)
    return _leased(job, job, Lease(lease.token_hash, renew=True, duration_us=lease.duration_us), now)


def expire(job: Job, now: int) -> list[tuple[Job, JobTransition, JobEventType]]:
    """A RUNNING job whose lease expired: its attempt fails (LEASE_EXPIRED) and, while attempts
    remain, it is PENDING again. The changes in order, each with its transition (actor
    EXPIRY_ACTOR) and event type; [] when the job's lease has not expired (another replica renewed
    or expired it first)."""
    if job.state != JobState.RUNNING or not job.lease_expire_time or job.lease_expire_time > now:
        return []
    message = f"{LEASE_EXPIRED}: the lease of {job.lease_holder!r} expired without a heartbeat"
    failed, transition, etype = apply(job, Action.FAIL, now, message=message)
    steps = [(failed, transition._replace(actor=EXPIRY_ACTOR), etype)]
    if failed.attempt < failed.max_attempts:
        retried, transition, etype = apply(failed, Action.RETRY, now, message=f"{LEASE_EXPIRED}: attempts remain")
        steps.append((retried, transition._replace(actor=EXPIRY_ACTOR), etype))
    return steps
