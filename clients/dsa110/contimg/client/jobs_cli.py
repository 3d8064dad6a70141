"""`contimg jobs` write side: the commands a pipeline stage (or an operator) runs on jobs.

create, claim, start, heartbeat, progress, succeed, fail, cancel, retry, update, append-log and
logs (`--follow`); cli.py registers them beside list/get/watch. Each prints the job (or what the
RPC returns) as a one-row table, or with `--json` as one JSON object; writes need a token
(`--token` or CONTIMG_TOKEN) unless the server allows anonymous writes.

A shell worker:

    while true; do
        claim=$(contimg jobs claim image --wait 60 --lease 120 --json) || exit
        [ -n "$claim" ] || continue                 # nothing came within the wait
        name=$(jq -r .job.name <<<"$claim"); export CONTIMG_LEASE_TOKEN=$(jq -r .lease_token <<<"$claim")
        run_stage "$name" && contimg jobs succeed "$name" || contimg jobs fail "$name" "stage failed"
    done
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from dsa110.contimg.v1 import jobs_pb2
from google.protobuf import struct_pb2
from google.protobuf.descriptor import EnumDescriptor

from . import names
from ._sync import Client
from .cli import EXIT_USAGE, JOB_COLUMNS, Columns, Output, _non_negative, _prefixed
from .watch import is_final

Job = jobs_pb2.Job
JobLogEntry = jobs_pb2.JobLogEntry

LEASE_TOKEN_ENV = "CONTIMG_LEASE_TOKEN"
# `logs --follow`: log appends publish no job event, so the job is polled (GetJob, a cached read)
# with this backoff, back to the shortest as soon as new lines come.
FOLLOW_POLL_MIN_S = 0.1
FOLLOW_POLL_MAX_S = 2.0
FOLLOW_PAGE_SIZE = 500

WRITE_COLUMNS: Columns = [
    *JOB_COLUMNS[:6],
    ("PRIORITY", lambda j: str(j.priority)),
    ("LEASE_HOLDER", lambda j: j.lease_holder or "-"),
    ("LEASE_EXPIRES", lambda j: j.lease_expire_time.ToJsonString() if j.HasField("lease_expire_time") else "-"),
]
LEASE_COLUMNS: Columns = [*WRITE_COLUMNS, ("LEASE_TOKEN", lambda j: j.lease_token)]
CLAIM_COLUMNS: Columns = [
    *[(header, lambda c, row=row: row(c.job)) for header, row in WRITE_COLUMNS],
    ("LEASE_TOKEN", lambda c: c.lease_token),
]


# --------------------------------------------------------------------------------------------
# Argument types


def _enum_choice(enum: EnumDescriptor, prefix: str) -> Callable[[str], int]:
    """`image`, `IMAGE` or `TYPE_IMAGE` -> Job.TYPE_IMAGE (the UNSPECIFIED value is refused)."""
    choices = [v.name.removeprefix(prefix).lower() for v in enum.values if v.number != 0]

    def parse(text: str) -> int:
        value = enum.values_by_name.get(prefix + text.upper().removeprefix(prefix))
        if value is None or value.number == 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(choices)}")
        return value.number

    parse.__name__ = enum.name.lower()  # argparse names the type in its error message
    return parse


job_type = _enum_choice(Job.DESCRIPTOR.enum_types_by_name["Type"], "TYPE_")
job_stage = _enum_choice(Job.DESCRIPTOR.enum_types_by_name["Stage"], "STAGE_")


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a non-negative number of seconds, got {text!r}")
    return value


def _percent(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}")
    return value


def _json_object(text: str) -> struct_pb2.Struct:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    parameters = struct_pb2.Struct()
    parameters.update(value)
    return parameters


def _job(args: argparse.Namespace) -> str:
    return _prefixed(names.JOBS, args.name)


def _lease_token(args: argparse.Namespace) -> str:
    return args.lease_token if args.lease_token is not None else os.environ.get(LEASE_TOKEN_ENV, "")


# --------------------------------------------------------------------------------------------
# Commands


def jobs_create(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = Job(
        type=args.type,
        measurement_set=args.ms,
        ms_path=args.ms_path,
        parameters=args.parameters,
        max_attempts=args.max_attempts,
        priority=args.priority,
    )
    out.rows([client.create_job(job, args.id)], WRITE_COLUMNS)


def jobs_claim(client: Client, args: argparse.Namespace, out: Output) -> None:
    claimed = client.claim_job(
        args.types,
        worker=args.worker,
        lease_duration_s=args.lease,
        wait_s=args.wait,
        measurement_set=args.ms,
        min_priority=args.min_priority,
    )
    if claimed.HasField("job"):  # else nothing came within the wait: no output, exit 0
        out.rows([claimed], CLAIM_COLUMNS)


def jobs_start(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.start_job(_job(args), worker=args.worker, lease_duration_s=args.lease)
    out.rows([job], LEASE_COLUMNS if job.lease_token else WRITE_COLUMNS)


def jobs_heartbeat(client: Client, args: argparse.Namespace, out: Output) -> None:
    token = _lease_token(args)
    if not token:
        print(f"contimg: heartbeat needs --lease-token (or {LEASE_TOKEN_ENV})", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    renewed = client.heartbeat_job(_job(args), token, lease_duration_s=args.lease)
    out.rows([renewed], [("LEASE_EXPIRES", lambda r: r.lease_expire_time.ToJsonString())])


def jobs_progress(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.report_job_progress(_job(args), args.stage, args.percent, args.message, lease_token=_lease_token(args))
    out.rows([job], WRITE_COLUMNS)


def jobs_succeed(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.succeed_job(_job(args), args.artifacts, args.message, lease_token=_lease_token(args))
    out.rows([job], WRITE_COLUMNS)


def jobs_fail(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.fail_job(_job(args), args.error_message, lease_token=_lease_token(args))
    out.rows([job], WRITE_COLUMNS)


def jobs_cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    out.rows([client.cancel_job(_job(args), args.reason)], WRITE_COLUMNS)


def jobs_retry(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.retry_job(_job(args), ignore_attempt_limit=args.ignore_attempt_limit)
    out.rows([job], WRITE_COLUMNS)


def jobs_update(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.update_job(Job(name=_job(args), priority=args.priority), ["priority"])
    out.rows([job], WRITE_COLUMNS)


def jobs_append_log(client: Client, args: argparse.Namespace, out: Output) -> None:
    name = _job(args)
    if args.lines:
        batches: Iterator[list[str]] = iter([args.lines])
    else:
        batches = _stdin_batches(1000)  # the most one call takes
    reply = None
    for batch in batches:  # each batch is appended atomically, once (a request_id each)
        reply = client.append_job_log(name, batch)
    if reply is None:
        print("contimg: no log lines given (as arguments or on stdin)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    out.rows([reply], [("LOG_LINES", lambda r: str(r.log_line_count))])


def _stdin_batches(size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for line in sys.stdin:
        batch.append(line.rstrip("\n"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def jobs_logs(client: Client, args: argparse.Namespace, out: Output) -> None:
    name = _job(args)
    if args.limit == 0:
        return
    if args.follow:
        entries: Iterator[JobLogEntry] = follow_logs(client, name)
    else:
        entries = iter(client.list_job_log_entries(name, min(args.limit or FOLLOW_PAGE_SIZE, 1000)))
    for count, entry in enumerate(entries, 1):
        if out.as_json:
            out.json(entry)
        else:
            stamp = f"{entry.time.ToJsonString()} " if args.timestamps else ""
            print(f"{stamp}{entry.text}", file=out.stream, flush=True)
        if args.limit is not None and count >= args.limit:
            return


def follow_logs(
    client: Client,
    name: str,
    *,
    page_size: int = FOLLOW_PAGE_SIZE,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[JobLogEntry]:
    """Every log line of a job, then each new one as it is appended, until the job is final.

    Log appends publish no event, so the job is polled (GetJob: its `log_line_count` and state)
    with backoff; new lines are read from the last page read (page tokens are positions in the
    log), so a poll that finds some re-reads at most one page. Ends once the job was final
    before a read that found every line.
    """
    seen = 0  # line number of the last line yielded
    anchor = ""  # page token of the last page read: new lines are there or after it
    delay = FOLLOW_POLL_MIN_S
    while True:
        job = client.get_job(name)
        if job.log_line_count > seen:
            request = jobs_pb2.ListJobLogEntriesRequest(parent=name, page_size=page_size, page_token=anchor)
            token = anchor
            for page in client.list_job_log_entries(request=request).pages:
                anchor = token
                for entry in page.entries:
                    if entry.line_number > seen:
                        seen = entry.line_number
                        yield entry
                token = page.next_page_token
            delay = FOLLOW_POLL_MIN_S
        else:
            delay = min(delay * 2, FOLLOW_POLL_MAX_S)
        if is_final(job) and seen >= job.log_line_count:
            return
        sleep(delay)


# --------------------------------------------------------------------------------------------
# Parser


def add_job_commands(jobs: Any, command: Callable[..., Any]) -> None:
    """Registers the write commands in the `jobs` group; `command(group, name, handler, help)`
    is cli.py's, which adds the connection options (and `--json`) to each."""
    type_names = ", ".join(v.name.removeprefix("TYPE_").lower() for v in Job.Type.DESCRIPTOR.values[1:])
    stage_names = ", ".join(v.name.removeprefix("STAGE_").lower() for v in Job.Stage.DESCRIPTOR.values[1:])

    def lease_token(sub: Any) -> None:
        sub.add_argument(
            "--lease-token",
            default=None,
            help=f"the lease of a claimed/started job: refused (LEASE_LOST) once not the current one "
            f"(default: {LEASE_TOKEN_ENV})",
        )

    def worker(sub: Any) -> None:
        sub.add_argument("--worker", default="", help="worker identity for the lease (default host:pid)")
        sub.add_argument("--lease", type=_seconds, default=None, metavar="SECONDS", help="lease length (server: 60)")

    create = command(jobs, "create", jobs_create, "create a PENDING job")
    create.add_argument("type", type=job_type, help=type_names)
    create.add_argument("--ms", default="", help="measurement set (name or path)")
    create.add_argument("--ms-path", default="", help="the MS a convert job writes")
    create.add_argument("--id", default="", help="job id (default: generated)")
    create.add_argument("--priority", type=int, default=0, help="claim order, higher first (default 0)")
    create.add_argument("--max-attempts", type=int, default=0, help="1 to 10 (server default 3)")
    create.add_argument("--parameters", type=_json_object, default=None, metavar="JSON", help="a JSON object")

    claim = command(
        jobs,
        "claim",
        jobs_claim,
        "take the next PENDING job (prints nothing, exit 0, if none came within --wait)",
    )
    claim.add_argument("types", nargs="*", type=job_type, metavar="TYPE", help=f"any of {type_names} (default any)")
    worker(claim)
    claim.add_argument("--wait", type=_seconds, default=None, metavar="SECONDS", help="long-poll up to this (max 300)")
    claim.add_argument("--ms", default="", help="only jobs of this measurement set")
    claim.add_argument("--min-priority", type=int, default=None, help="only jobs of at least this priority")

    start = command(jobs, "start", jobs_start, "PENDING -> RUNNING (with --worker: under a lease)")
    start.add_argument("name")
    worker(start)

    heartbeat = command(jobs, "heartbeat", jobs_heartbeat, "renew a job's lease")
    heartbeat.add_argument("name")
    lease_token(heartbeat)
    heartbeat.add_argument("--lease", type=_seconds, default=None, metavar="SECONDS", help="new lease length")

    progress = command(jobs, "progress", jobs_progress, "report a running job's stage and progress")
    progress.add_argument("name")
    progress.add_argument("--stage", type=job_stage, default=Job.STAGE_UNSPECIFIED, help=stage_names)
    progress.add_argument("--percent", type=_percent, default=0.0, help="0 to 100")
    progress.add_argument("--message", default="")
    lease_token(progress)

    succeed = command(jobs, "succeed", jobs_succeed, "RUNNING -> SUCCEEDED")
    succeed.add_argument("name")
    succeed.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help="resource names or absolute paths")
    succeed.add_argument("--message", default="")
    lease_token(succeed)

    fail = command(jobs, "fail", jobs_fail, "PENDING or RUNNING -> FAILED")
    fail.add_argument("name")
    fail.add_argument("error_message", metavar="ERROR")
    lease_token(fail)

    cancel = command(jobs, "cancel", jobs_cancel, "PENDING or RUNNING -> CANCELLED")
    cancel.add_argument("name")
    cancel.add_argument("--reason", default="")

    retry = command(jobs, "retry", jobs_retry, "FAILED -> PENDING")
    retry.add_argument("name")
    retry.add_argument(
        "--ignore-attempt-limit", action="store_true", help="re-run though attempts are used up (recorded)"
    )

    update = command(jobs, "update", jobs_update, "change a job's priority")
    update.add_argument("name")
    update.add_argument("--priority", type=int, required=True)

    append = command(jobs, "append-log", jobs_append_log, "append log lines (from stdin when none given)")
    append.add_argument("name")
    append.add_argument("lines", nargs="*", metavar="LINE")

    logs = command(jobs, "logs", jobs_logs, "a job's log lines")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="print new lines as they come, until the job ends")
    logs.add_argument("--timestamps", action="store_true", help="prefix each line with its time")
    logs.add_argument("--limit", type=_non_negative, default=None, help="stop after N lines")
