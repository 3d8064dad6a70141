"""JobRepository on SQLite: jobs, their recorded transitions (the event log) and log lines."""

from __future__ import annotations

from collections.abc import Sequence

from ...domain import jobs as job_rules
from ...domain.errors import AlreadyExists, NotFound
from ...domain.names import ms_name
from ...domain.records import Job, JobEvent, JobEventType, JobLogEntry, JobState, JobTransition, Page
from ...repositories.protocols import ClaimSpec, EventPublisher, Idempotency, JobMutation, LeaseRenewal, ListQuery
from .. import rows
from ..clock import now_us
from .database import Database
from .idempotency import check_request_id, remember_request_id
from .reads import Row
from .sql import Table, placeholders
from .writer import Txn

_COLUMNS = {name: name for name in rows.JOB_COLUMNS}
_TABLE: Table[str, Job] = Table("jobs", "id", rows.JOB_SELECT, rows.job_from_row, _COLUMNS, "id")
_COLUMNS["measurement_set"] = "ms_path"
# job_events is never trimmed: it is both the jobs' transition history (GetJob) and the replay log of
# WatchJobs. At ~10 events per job and a few thousand jobs a day it grows by well under 1 MB a day.


def _load(txn: Txn, job_id: str) -> Job | None:
    found = txn.fetchall(f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id = ?", (job_id,))
    return rows.job_from_row(found[0]) if found else None


_TRANSITIONS = (
    "SELECT sequence, from_state, to_state, stage, message, time, actor FROM job_events "
    "WHERE job_id = ? ORDER BY sequence"
)


def _transitions(found: list[Row]) -> tuple[JobTransition, ...]:
    return tuple(JobTransition(f, t, stage, msg, when, seq, who) for seq, f, t, stage, msg, when, who in found)


def _committed(txn: Txn, job: Job) -> Job:
    """`job` with its transitions as this transaction sees them: what the call that made it returns
    (a read after the commit could show a later call's state)."""
    return job._replace(transitions=_transitions(txn.fetchall(_TRANSITIONS, (job.id,))))


def _record_event(txn: Txn, job: Job, etype: JobEventType, transition: JobTransition) -> JobEvent:
    cursor = txn.execute(
        "INSERT INTO job_events (job_id, type, from_state, to_state, stage, message, time, snapshot, actor) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.id,
            int(etype),
            transition.from_state,
            transition.to_state,
            transition.stage,
            transition.message,
            transition.time,
            rows.job_snapshot(job),
            transition.actor,
        ),
    )
    seq = int(cursor.lastrowid or 0)
    return JobEvent(sequence=seq, type=int(etype), job=job, transition=transition._replace(sequence=seq))


def _update(txn: Txn, job: Job) -> None:
    sets = ", ".join(f"{c} = ?" for c in rows.JOB_COLUMNS[1:])
    txn.execute(f"UPDATE jobs SET {sets} WHERE id = ?", [*rows.job_values(job)[1:], job.id])


def _claim_query(spec: ClaimSpec) -> tuple[str, list[object]]:
    """The first claimable job's row: one probe of jobs_by_claim (migration 6) when unfiltered."""
    where: list[str] = ["state = ?"]
    params: list[object] = [int(JobState.PENDING)]
    if spec.types:
        where.append(f"type IN ({placeholders(len(spec.types))})")
        params.extend(spec.types)
    if spec.ms_path:
        where.append("ms_path = ?")
        params.append(spec.ms_path)
    if spec.min_priority is not None:
        where.append("priority >= ?")
        params.append(spec.min_priority)
    sql = (
        f"SELECT {rows.JOB_SELECT} FROM jobs WHERE {' AND '.join(where)} "
        "ORDER BY priority DESC, create_time, id LIMIT 1"
    )
    return sql, params


class SQLiteJobs:
    def __init__(self, db: Database, publisher: EventPublisher):
        self.db = db
        self.publisher = publisher

    def _publish(self, result: tuple[object, JobEvent | None]) -> None:
        if result[1] is not None:
            self.publisher.publish(result[1])

    async def get(self, job_id: str, *, with_transitions: bool = True) -> Job | None:
        found = await self.db.lookup(f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id = ?", (job_id,))
        if not found:
            return None
        job = rows.job_from_row(found[0])
        if with_transitions:
            job = job._replace(transitions=_transitions(await self.db.lookup(_TRANSITIONS, (job_id,))))
        return job

    async def list_page(self, query: ListQuery) -> Page[Job]:
        return await _TABLE.page(self.db, query)

    async def create(self, job: Job, idem: Idempotency | None, *, actor: str = "") -> Job:
        def body(txn: Txn) -> tuple[Job, JobEvent | None]:
            earlier = check_request_id(txn, idem)
            if earlier is not None:
                first = rows.job_remembered(earlier)
                if first is not None:
                    return first, None
                stored = _load(txn, str(earlier))  # stored before first results were kept
                if stored is None:
                    raise NotFound("JOB", f"jobs/{earlier}")
                return _committed(txn, stored), None
            if _load(txn, job.id) is not None:
                raise AlreadyExists("JOB", f"jobs/{job.id}")
            if job.ms_path and not txn.fetchall("SELECT 1 FROM measurement_sets WHERE path = ?", (job.ms_path,)):
                raise NotFound("MEASUREMENT_SET", ms_name(job.ms_path))
            now = now_us()
            new = job._replace(
                state=JobState.PENDING,
                stage=0,
                progress_percent=0.0,
                attempt=0,
                create_time=now,
                start_time=0,
                end_time=0,
                update_time=now,
                error_message="",
                artifacts=(),
                log_line_count=0,
                transitions=(),
            )
            txn.execute(
                f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({placeholders(len(rows.JOB_COLUMNS))})",
                rows.job_values(new),
            )
            creation = JobTransition(0, int(JobState.PENDING), 0, "", now, actor=actor)
            event = _record_event(txn, new, JobEventType.CREATED, creation)
            created = _committed(txn, new)
            remember_request_id(txn, idem, rows.remembered(created))
            return created, event

        created, _ = await self.db.write(body, self._publish)
        return created

    async def transition(self, job_id: str, mutate: JobMutation, idem: Idempotency | None, *, actor: str = "") -> Job:
        def body(txn: Txn) -> tuple[Job, JobEvent | None]:
            earlier = check_request_id(txn, idem)
            first = rows.job_remembered(earlier)
            if first is not None:
                return first, None
            current = _load(txn, job_id)
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            if earlier is not None:  # stored before first results were kept
                return _committed(txn, current), None
            new, transition, etype = mutate(current, now_us())
            transition = transition._replace(actor=actor)
            _update(txn, new)
            event = _record_event(txn, new, etype, transition)
            changed = _committed(txn, new)
            remember_request_id(txn, idem, rows.remembered(changed))
            return changed, event

        changed, _ = await self.db.write(body, self._publish)
        return changed

    async def claim(self, spec: ClaimSpec, mutate: JobMutation, *, actor: str = "") -> Job | None:
        sql, params = _claim_query(spec)
        # A read first: a claimer that finds nothing (most of a waiting claimer's tries) costs the
        # writer nothing. The write below looks again.
        if not await self.db.lookup(sql, params):
            return None

        # The one writer thread runs this whole body in one transaction: the job it finds PENDING is
        # still PENDING when it is updated, whichever process or claimer asks next.
        def body(txn: Txn) -> tuple[Job | None, JobEvent | None]:
            found = txn.fetchall(sql, params)
            if not found:
                return None, None
            new, transition, etype = mutate(rows.job_from_row(found[0]), now_us())
            _update(txn, new)
            event = _record_event(txn, new, etype, transition._replace(actor=actor))
            return _committed(txn, new), event

        claimed, _ = await self.db.write(body, self._publish)
        return claimed

    async def heartbeat(self, job_id: str, renew: LeaseRenewal) -> Job:
        def body(txn: Txn) -> Job:
            current = _load(txn, job_id)
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            renewed = renew(current, now_us())
            txn.execute(
                "UPDATE jobs SET lease_expire_time = ?, lease_duration = ? WHERE id = ?",
                (renewed.lease_expire_time, renewed.lease_duration, job_id),
            )
            return renewed

        return await self.db.write(body)

    async def expire_leases(self, now: int, limit: int) -> int:
        due = await self.db.lookup(
            "SELECT id FROM jobs WHERE state = ? AND lease_expire_time > 0 AND lease_expire_time <= ? LIMIT ?",
            (int(JobState.RUNNING), now, limit),
        )
        expired = 0
        for (job_id,) in due:

            def body(txn: Txn, job_id: str = job_id) -> list[JobEvent]:
                # Read again inside the write: another process may have renewed, finished or expired
                # it since (job_rules.expire then changes nothing).
                current = _load(txn, job_id)
                if current is None:
                    return []
                events = []
                for new, transition, etype in job_rules.expire(current, now_us()):
                    _update(txn, new)
                    events.append(_record_event(txn, new, etype, transition))
                return events

            events = await self.db.write(body, self._publish_all)
            expired += bool(events)
        return expired

    def _publish_all(self, events: list[JobEvent]) -> None:
        for event in events:
            self.publisher.publish(event)

    async def update_priority(self, job_id: str, priority: int, idem: Idempotency | None, actor: str = "") -> Job:
        def body(txn: Txn) -> tuple[Job, JobEvent | None]:
            earlier = check_request_id(txn, idem)
            first = rows.job_remembered(earlier)
            if first is not None:
                return first, None
            current = _load(txn, job_id)
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            changed, transition = job_rules.reprioritized(current, priority, now_us(), actor)
            event = None
            if transition is not None:
                _update(txn, changed)
                event = _record_event(txn, changed, JobEventType.UPDATED, transition)
            changed = _committed(txn, changed)
            remember_request_id(txn, idem, rows.remembered(changed))
            return changed, event

        job, _ = await self.db.write(body, self._publish)
        return job

    async def append_log(self, job_id: str, lines: Sequence[str], idem: Idempotency | None) -> int:
        def body(txn: Txn) -> int:
            current = _load(txn, job_id)
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            if check_request_id(txn, idem) is not None:
                return current.log_line_count
            now = now_us()
            start = current.log_line_count
            txn.executemany(
                "INSERT INTO job_logs VALUES (?, ?, ?, ?)",
                [(job_id, start + i + 1, now, text) for i, text in enumerate(lines)],
            )
            total = start + len(lines)
            txn.execute("UPDATE jobs SET log_line_count = ?, update_time = ? WHERE id = ?", (total, now, job_id))
            remember_request_id(txn, idem, total)
            return total

        return await self.db.write(body)

    async def list_logs(self, job_id: str, page_size: int, after: int) -> Page[JobLogEntry]:
        found = await self.db.lookup("SELECT log_line_count FROM jobs WHERE id = ?", (job_id,))
        if not found:
            raise NotFound("JOB", f"jobs/{job_id}")
        entries = [
            JobLogEntry(*r)
            for r in await self.db.lookup(
                "SELECT line_number, time, text FROM job_logs WHERE job_id = ? AND line_number > ? "
                "ORDER BY line_number LIMIT ?",
                (job_id, after, page_size + 1),
            )
        ]
        more = len(entries) > page_size
        entries = entries[:page_size]
        return Page(entries, [entries[-1].line_number] if more else None, int(found[0][0]))

    async def events_after(self, sequence: int, job_id: str | None, limit: int) -> list[JobEvent]:
        if job_id is None:
            found = await self.db.lookup(
                f"SELECT {rows.EVENT_SELECT} FROM job_events WHERE sequence > ? ORDER BY sequence LIMIT ?",
                (sequence, limit),
            )
        else:
            found = await self.db.lookup(
                f"SELECT {rows.EVENT_SELECT} FROM job_events WHERE job_id = ? AND sequence > ? "
                "ORDER BY sequence LIMIT ?",
                (job_id, sequence, limit),
            )
        return [rows.event_from_row(r) for r in found]

    async def last_sequence(self) -> int:
        found = await self.db.lookup("SELECT coalesce(max(sequence), 0) FROM job_events")
        return int(found[0][0])
