"""The job state machine: the only code that decides whether a job may change state."""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

from .errors import FailedPrecondition
from .records import Job, JobEventType, JobStage, JobState, JobTransition

FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.CANCELLED})


class Action(Enum):
    START = "StartJob"
    PROGRESS = "ReportJobProgress"
    SUCCEED = "SucceedJob"
    FAIL = "FailJob"
    CANCEL = "CancelJob"
    RETRY = "RetryJob"


# action -> (states it may leave, state it enters)
TRANSITIONS: dict[Action, tuple[frozenset[JobState], JobState]] = {
    Action.START: (frozenset({JobState.PENDING}), JobState.RUNNING),
    Action.PROGRESS: (frozenset({JobState.RUNNING}), JobState.RUNNING),
    Action.SUCCEED: (frozenset({JobState.RUNNING}), JobState.SUCCEEDED),
    Action.FAIL: (frozenset({JobState.PENDING, JobState.RUNNING}), JobState.FAILED),
    Action.CANCEL: (frozenset({JobState.PENDING, JobState.RUNNING}), JobState.CANCELLED),
    Action.RETRY: (frozenset({JobState.FAILED}), JobState.PENDING),
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
) -> tuple[Job, JobTransition, JobEventType]:
    """The job after `action`, the transition to record and the event type; or FAILED_PRECONDITION."""
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
    if action is Action.RETRY and job.attempt >= job.max_attempts:
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
    new = job._replace(state=target, update_time=now, transitions=(), **changes)
    event_type = JobEventType.PROGRESS if action is Action.PROGRESS else JobEventType.STATE_CHANGED
    transition = JobTransition(
        from_state=int(current), to_state=int(target), stage=new.stage, message=message, time=now
    )
    return new, transition, event_type
