"""The job state machine: the only code that decides whether a job may change state."""

from __future__ import annotations

from dataclasses import replace
from enum import Enum

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
    artifacts: list[str] | None = None,
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
    new = replace(job, state=target, update_time=now, transitions=[])
    if action is Action.START:
        new.attempt += 1
        new.start_time = now
        new.end_time = 0
        new.progress_percent = 0.0
        new.error_message = ""
    elif action is Action.PROGRESS:
        if stage:
            new.stage = stage
        if progress is not None:
            new.progress_percent = progress
    elif action is Action.SUCCEED:
        new.stage = JobStage.DONE
        new.progress_percent = 100.0
        new.end_time = now
        new.artifacts = list(artifacts or [])
    elif action is Action.FAIL:
        new.error_message = message
        new.end_time = now
    elif action is Action.CANCEL:
        new.end_time = now
    elif action is Action.RETRY:
        new.stage = JobStage.UNSPECIFIED
        new.progress_percent = 0.0
        new.end_time = 0
    event_type = JobEventType.PROGRESS if action is Action.PROGRESS else JobEventType.STATE_CHANGED
    transition = JobTransition(
        from_state=int(current), to_state=int(target), stage=new.stage, message=message, time=now
    )
    return new, transition, event_type
