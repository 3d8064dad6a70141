"""JobRepository on PostgreSQL: jobs, their recorded transitions (the event log) and log lines.

The same behaviour as storage/sqlite/jobs.py. What PostgreSQL changes is who else is writing: every
replica commits to the same tables at once, under READ COMMITTED, so two things the SQLite engine
gets from its single writer have to be made explicit here.

Job event sequences in commit order
-----------------------------------
`job_events` is the stream every replica tails (events/tail.py): each process reads
`events_after(last)` and advances `last` to the newest sequence it saw. That is only correct if,
once a reader sees sequence S, it already sees every smaller one. A PostgreSQL SEQUENCE (or an
identity column) does not give that: numbers are handed out when the INSERT runs, not when it
commits, so a transaction that drew 10 can commit after the one that drew 11. A tailer that read 11
in between would move past 10 and never deliver it, on any replica.

So the number comes from one counter row, `UPDATE job_event_counter SET last = last + 1 RETURNING
last`, in the transaction that records the event. The UPDATE holds that row's lock until COMMIT (or
ROLLBACK), so a second transaction recording an event waits at that statement until the first has
ended, then reads the committed `last` and takes the next number. PostgreSQL releases a
transaction's locks only after its commit is visible to new snapshots, so numbers are assigned in
commit order: whoever sees S sees every smaller sequence. A transaction that rolls back after taking
a number rolls the counter back with it, so the log has no gaps either.

The price is that event-recording transactions of all replicas pass through that row one at a time,
from the UPDATE to COMMIT. The lock is therefore taken as late as possible: after the job row is
written and its earlier transitions are read, in the same statement that inserts the event, leaving
only the optional request_id insert and the COMMIT inside the serialized section. Writes that record
no event (logs, reads, other resources) never touch the row.

Read-modify-write of one job
----------------------------
A transition reads the job, applies the state machine and writes the result. Under READ COMMITTED a
plain read would let two replicas both start from RUNNING and the second overwrite the first's
change. Each transition and log append therefore locks its job row (`FOR NO KEY UPDATE`) before
reading it: writers of one job take turns, and a retried request with the same request_id waits for
the first and then finds its stored result.

Claims and lease expiry
-----------------------
ClaimJob takes the first PENDING job in claim order with `FOR NO KEY UPDATE SKIP LOCKED`: a row
another claimer (of any replica) holds is passed over rather than waited for, and a row whose lock
was released by a committed claim is re-checked against `state = PENDING` by PostgreSQL before it
is returned (READ COMMITTED re-evaluates the WHERE clause on the newest version), so a job is
claimed once. The expiry sweep of every replica locks each due job row and decides on what it
reads then (domain.jobs.expire): a job renewed, finished or already expired by another replica
meanwhile is left alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from ...domain import jobs as job_rules
from ...domain.errors import AlreadyExists, NotFound
from ...domain.names import ms_name
from ...domain.records import Job, JobEvent, JobEventType, JobLogEntry, JobState, JobTransition, Page
from ...repositories.protocols import ClaimSpec, EventPublisher, Idempotency, JobMutation, LeaseRenewal, ListQuery
from .. import rows
from ..clock import now_us
from .database import Database
from .idempotency import check_request_id, remember_request_id
from .sql import Table

if TYPE_CHECKING:
    from .database import Conn

Result = tuple[Job, JobEvent | None]

_COLUMNS = {name: name for name in rows.JOB_COLUMNS}
_TABLE: Table[str, Job] = Table(
    "jobs",
    "id",
    rows.JOB_SELECT,
    rows.job_from_row,
    _COLUMNS,
    "id",
    {"create_time": "bigint", "update_time": "bigint", "id": "text"},
    "text[]",
)
_COLUMNS["measurement_set"] = "ms_path"
# job_events is never trimmed: it is both the jobs' transition history (GetJob) and the replay log of
# WatchJobs (see storage/sqlite/jobs.py for its size).

_SELECT = f"SELECT {rows.JOB_SELECT} FROM jobs WHERE id = $1"
_TRANSITIONS = (
    "SELECT from_state, to_state, stage, message, time, sequence, actor FROM job_events "
    "WHERE job_id = $1 ORDER BY sequence"
)
_INSERT = (
    f"INSERT INTO jobs ({rows.JOB_SELECT}) VALUES ({', '.join(f'${i + 1}' for i in range(len(rows.JOB_COLUMNS)))}) "
    "ON CONFLICT (id) DO NOTHING RETURNING id"
)
_UPDATE = (
    "UPDATE jobs SET "
    + ", ".join(f"{c} = ${i + 1}" for i, c in enumerate(rows.JOB_COLUMNS[1:]))
    + f" WHERE id = ${len(rows.JOB_COLUMNS)}"
)
# The counter row's lock is taken here and held to COMMIT: see the module docstring.
_RECORD_EVENT = (
    "WITH numbered AS (UPDATE job_event_counter SET last = last + 1 RETURNING last) "
    "INSERT INTO job_events (sequence, job_id, type, from_state, to_state, stage, message, time, snapshot, actor) "
    "VALUES ((SELECT last FROM numbered), $1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING sequence"
)


async def _load(conn: Conn, job_id: str) -> Job | None:
    # tuple(): rows.py maps sequences, and asyncpg's Record is not one to the type checker.
    found = await conn.fetchrow(_SELECT, job_id)
    return rows.job_from_row(tuple(found)) if found is not None else None


async def _lock(conn: Conn, job_id: str) -> Job | None:
    """The job, its row locked until COMMIT: concurrent writers of one job take turns (no lost
    update). NO KEY: other transactions may still insert rows referencing the job meanwhile."""
    found = await conn.fetchrow(_SELECT + " FOR NO KEY UPDATE", job_id)
    return rows.job_from_row(tuple(found)) if found is not None else None


async def _transitions(conn: Conn | Database, job_id: str) -> tuple[JobTransition, ...]:
    found = await conn.fetch(_TRANSITIONS, job_id)
    return tuple(JobTransition(*r) for r in found)


async def _committed(conn: Conn, job: Job) -> Job:
    """`job` with its transitions as this transaction sees them: what the call that made it returns
    (a read after the commit could show a later call's state)."""
    return job._replace(transitions=await _transitions(conn, job.id))


async def _record_event(conn: Conn, job: Job, etype: JobEventType, transition: JobTransition) -> JobEvent:
    """Number and insert the event: the last statement before COMMIT that the caller needs, since it
    takes the counter row's lock (module docstring)."""
    seq = int(
        await conn.fetchval(
            _RECORD_EVENT,
            job.id,
            int(etype),
            transition.from_state,
            transition.to_state,
            transition.stage,
            transition.message,
            transition.time,
            rows.job_snapshot(job),
            transition.actor,
        )
    )
    return JobEvent(sequence=seq, type=int(etype), job=job, transition=transition._replace(sequence=seq))


_LOCKED = " FOR NO KEY UPDATE SKIP LOCKED"


def _claim_query(spec: ClaimSpec) -> tuple[str, list[object]]:
    where: list[str] = ["state = $1"]
    params: list[object] = [int(JobState.PENDING)]
    if spec.types:
        params.append(list(spec.types))
        where.append(f"type = ANY(${len(params)}::integer[])")
    if spec.ms_path:
        params.append(spec.ms_path)
        where.append(f"ms_path = ${len(params)}")
    if spec.min_priority is not None:
        params.append(spec.min_priority)
        where.append(f"priority >= ${len(params)}")
    sql = (
        f"SELECT {rows.JOB_SELECT} FROM jobs WHERE {' AND '.join(where)} "
        "ORDER BY priority DESC, create_time, id LIMIT 1" + _LOCKED
    )
    return sql, params


class PostgresJobs:
    def __init__(self, db: Database, publisher: EventPublisher):
        self.db = db
        self.publisher = publisher

    def _publish(self, result: tuple[object, JobEvent | None]) -> None:
        if result[1] is not None:
            self.publisher.publish(result[1])

    async def _write(self, body: Callable[[Conn], Awaitable[Result]]) -> Job:
        # A request_id run twice at once is retried by Database.write (idempotency.py).
        job, _ = await self.db.write(body, self._publish)
        return job

    async def get(self, job_id: str, *, with_transitions: bool = True) -> Job | None:
        found = await self.db.fetchrow(_SELECT, job_id)
        if found is None:
            return None
        job = rows.job_from_row(tuple(found))
        if with_transitions:
            job = job._replace(transitions=await _transitions(self.db, job_id))
        return job

    async def list_page(self, query: ListQuery) -> Page[Job]:
        return await _TABLE.page(self.db, query)

    async def create(self, job: Job, idem: Idempotency | None, *, actor: str = "") -> Job:
        async def body(conn: Conn) -> Result:
            earlier = await check_request_id(conn, idem)
            if earlier is not None:
                first = rows.job_remembered(earlier)
                if first is not None:
                    return first, None
                stored = await _load(conn, str(earlier))  # stored before first results were kept
                if stored is None:
                    raise NotFound("JOB", f"jobs/{earlier}")
                return await _committed(conn, stored), None
            if await _load(conn, job.id) is not None:
                raise AlreadyExists("JOB", f"jobs/{job.id}")
            # KEY SHARE: a concurrent delete of the MS waits for this commit (and then clears the
            # job's reference) instead of failing this insert on the foreign key.
            if job.ms_path and not await conn.fetchval(
                "SELECT 1 FROM measurement_sets WHERE path = $1 FOR KEY SHARE", job.ms_path
            ):
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
            if await conn.fetchval(_INSERT, *rows.job_values(new)) is None:
                raise AlreadyExists("JOB", f"jobs/{job.id}")  # created by another writer meanwhile
            event = await _record_event(
                conn, new, JobEventType.CREATED, JobTransition(0, int(JobState.PENDING), 0, "", now, actor=actor)
            )
            assert event.transition is not None
            created = new._replace(transitions=(event.transition,))
            await remember_request_id(conn, idem, rows.remembered(created))
            return created, event

        return await self._write(body)

    async def transition(self, job_id: str, mutate: JobMutation, idem: Idempotency | None, *, actor: str = "") -> Job:
        async def body(conn: Conn) -> Result:
            # Lock before looking for the request_id: a concurrent request with the same id then
            # waits here for the first to commit, and finds its result below.
            current = await _lock(conn, job_id)
            earlier = await check_request_id(conn, idem)
            first = rows.job_remembered(earlier)
            if first is not None:
                return first, None
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            if earlier is not None:  # stored before first results were kept
                return await _committed(conn, current), None
            new, transition, etype = mutate(current, now_us())
            transition = transition._replace(actor=actor)
            await conn.execute(_UPDATE, *rows.job_values(new)[1:], job_id)
            before = await _transitions(conn, job_id)  # fixed while the job row is locked
            event = await _record_event(conn, new, etype, transition)
            assert event.transition is not None
            changed = new._replace(transitions=(*before, event.transition))
            await remember_request_id(conn, idem, rows.remembered(changed))
            return changed, event

        return await self._write(body)

    async def claim(self, spec: ClaimSpec, mutate: JobMutation, *, actor: str = "") -> Job | None:
        sql, params = _claim_query(spec)
        # A read first (without the lock): a claimer that finds nothing costs no write transaction.
        if await self.db.fetchrow(sql.removesuffix(_LOCKED), *params) is None:
            return None

        async def body(conn: Conn) -> tuple[Job | None, JobEvent | None]:
            found = await conn.fetchrow(sql, *params)  # locked, or skipped by other claimers (module docstring)
            if found is None:
                return None, None
            current = rows.job_from_row(tuple(found))
            new, transition, etype = mutate(current, now_us())
            await conn.execute(_UPDATE, *rows.job_values(new)[1:], new.id)
            before = await _transitions(conn, new.id)
            event = await _record_event(conn, new, etype, transition._replace(actor=actor))
            assert event.transition is not None
            return new._replace(transitions=(*before, event.transition)), event

        claimed, _ = await self.db.write(body, self._publish)
        return claimed

    async def heartbeat(self, job_id: str, renew: LeaseRenewal) -> Job:
        async def body(conn: Conn) -> Job:
            current = await _lock(conn, job_id)
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            renewed = renew(current, now_us())
            await conn.execute(
                "UPDATE jobs SET lease_expire_time = $1, lease_duration = $2 WHERE id = $3",
                renewed.lease_expire_time,
                renewed.lease_duration,
                job_id,
            )
            return renewed

        return await self.db.write(body)

    async def expire_leases(self, now: int, limit: int) -> int:
        due = await self.db.fetch(
            "SELECT id FROM jobs WHERE state = $1 AND lease_expire_time > 0 AND lease_expire_time <= $2 LIMIT $3",
            int(JobState.RUNNING),
            now,
            limit,
        )
        expired = 0
        for (job_id,) in due:

            async def body(conn: Conn, job_id: str = job_id) -> list[JobEvent]:
                current = await _lock(conn, job_id)  # decided on the locked row: once across replicas
                if current is None:
                    return []
                events = []
                for new, transition, etype in job_rules.expire(current, now_us()):
                    await conn.execute(_UPDATE, *rows.job_values(new)[1:], job_id)
                    events.append(await _record_event(conn, new, etype, transition))
                return events

            events = await self.db.write(body, self._publish_all)
            expired += bool(events)
        return expired

    def _publish_all(self, events: list[JobEvent]) -> None:
        for event in events:
            self.publisher.publish(event)

    async def update_priority(self, job_id: str, priority: int, idem: Idempotency | None, actor: str = "") -> Job:
        async def body(conn: Conn) -> tuple[Job, JobEvent | None]:
            current = await _lock(conn, job_id)
            earlier = await check_request_id(conn, idem)
            first = rows.job_remembered(earlier)
            if first is not None:
                return first, None
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            changed, transition = job_rules.reprioritized(current, priority, now_us(), actor)
            event = None
            if transition is not None:
                await conn.execute(_UPDATE, *rows.job_values(changed)[1:], job_id)
                event = await _record_event(conn, changed, JobEventType.UPDATED, transition)
            changed = await _committed(conn, changed)
            await remember_request_id(conn, idem, rows.remembered(changed))
            return changed, event

        job, _ = await self.db.write(body, self._publish)
        return job

    async def append_log(self, job_id: str, lines: Sequence[str], idem: Idempotency | None) -> int:
        async def body(conn: Conn) -> int:
            current = await _lock(conn, job_id)  # line numbers follow log_line_count: one appender at a time
            if current is None:
                raise NotFound("JOB", f"jobs/{job_id}")
            if await check_request_id(conn, idem) is not None:
                return current.log_line_count
            now = now_us()
            start = current.log_line_count
            await conn.execute(
                "INSERT INTO job_logs (job_id, line_number, time, text) "
                "SELECT $1, $2 + n, $3, line FROM unnest($4::text[]) WITH ORDINALITY AS given (line, n)",
                job_id,
                start,
                now,
                list(lines),
            )
            total = start + len(lines)
            await conn.execute(
                "UPDATE jobs SET log_line_count = $1, update_time = $2 WHERE id = $3", total, now, job_id
            )
            await remember_request_id(conn, idem, total)
            return total

        return await self.db.write(body)

    async def list_logs(self, job_id: str, page_size: int, after: int) -> Page[JobLogEntry]:
        count = await self.db.fetchval("SELECT log_line_count FROM jobs WHERE id = $1", job_id)
        if count is None:
            raise NotFound("JOB", f"jobs/{job_id}")
        entries = [
            JobLogEntry(*r)
            for r in await self.db.fetch(
                "SELECT line_number, time, text FROM job_logs WHERE job_id = $1 AND line_number > $2 "
                "ORDER BY line_number LIMIT $3",
                job_id,
                after,
                page_size + 1,
            )
        ]
        more = len(entries) > page_size
        entries = entries[:page_size]
        return Page(entries, [entries[-1].line_number] if more else None, int(count))

    async def events_after(self, sequence: int, job_id: str | None, limit: int) -> list[JobEvent]:
        # Sequences are commit-ordered (module docstring), so reading past `sequence` skips nothing.
        if job_id is None:
            found = await self.db.fetch(
                f"SELECT {rows.EVENT_SELECT} FROM job_events WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                sequence,
                limit,
            )
        else:
            found = await self.db.fetch(
                f"SELECT {rows.EVENT_SELECT} FROM job_events WHERE job_id = $1 AND sequence > $2 "
                "ORDER BY sequence LIMIT $3",
                job_id,
                sequence,
                limit,
            )
        return [rows.event_from_row(tuple(r)) for r in found]

    async def last_sequence(self) -> int:
        # The counter's committed value: the newest sequence any reader can see.
        return int(await self.db.fetchval("SELECT last FROM job_event_counter"))
