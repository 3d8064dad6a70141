"""One job moved through the server's own state machine, recording what the repository would."""

from __future__ import annotations

from collections.abc import Sequence

from dsa110.contimg.server.domain.jobs import Action, apply
from dsa110.contimg.server.domain.records import Job, JobEventType, JobState, JobTransition
from dsa110.contimg.server.storage import rows

JOB_EVENT_COLUMNS = ("job_id", "type", "from_state", "to_state", "stage", "message", "time", "snapshot")
JOB_LOG_COLUMNS = ("job_id", "line_number", "time", "text")


class JobHistory:
    """A job and, in the order they happened, its events (rows in JOB_EVENT_COLUMNS order, each with
    its time to merge them with other jobs' in time order) and its log lines."""

    def __init__(self, job: Job, created: int):
        self.job = job._replace(create_time=created, update_time=created)
        self.events: list[tuple[int, tuple[object, ...]]] = []
        self.logs: list[tuple[int, str]] = []
        self._record(JobEventType.CREATED, JobTransition(0, int(JobState.PENDING), 0, "", created))

    def act(
        self,
        action: Action,
        when: int,
        *,
        stage: int = 0,
        progress: float | None = None,
        message: str = "",
        artifacts: Sequence[str] | None = None,
    ) -> None:
        """Apply `action` at `when` as the server would (an invalid transition raises, as there)."""
        self.job, transition, etype = apply(
            self.job, action, when, stage=stage, progress=progress, message=message, artifacts=artifacts
        )
        self._record(etype, transition)

    def log(self, when: int, text: str) -> None:
        self.logs.append((when, text))
        self.job = self.job._replace(log_line_count=self.job.log_line_count + 1)

    def _record(self, etype: JobEventType, tr: JobTransition) -> None:
        self.events.append(
            (
                tr.time,
                (
                    self.job.id,
                    int(etype),
                    tr.from_state,
                    tr.to_state,
                    tr.stage,
                    tr.message,
                    tr.time,
                    rows.job_snapshot(self.job),  # the snapshot as the server writes it with the event
                ),
            )
        )
