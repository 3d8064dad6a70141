"""Resumable job-event streams.

A watch stream is reopened after UNAVAILABLE (server restart, network loss) with the request's
`after_sequence` set to the last sequence seen; the server replays what happened in between, so
the caller sees every event exactly once. Backoff between attempts is exponential with jitter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from dsa110.contimg.v1 import jobs_pb2

from .config import ClientConfig
from .errors import UnavailableError, from_aio_error, from_rpc_error

Job = jobs_pb2.Job
JobEvent = jobs_pb2.JobEvent

# A stream the server answered and that lived this long was a working connection: the next failure
# starts from the shortest backoff again.
_HEALTHY_STREAM_S = 1.0
# Initial metadata the server sends as soon as a watch is set up, before any event: a server that
# answered is reachable, even when no event comes for hours (and one that never answers, say it
# accepts connections but is hung, is not, however long each attempt takes to fail).
_WATCH_OPEN = ("contimg-watch", "open")


def _answered(metadata: Any) -> bool:
    return any(tuple(item) == _WATCH_OPEN for item in metadata or ())


def is_final(job: jobs_pb2.Job) -> bool:
    """True when no further transition can happen (FAILED counts once attempts are used up)."""
    if job.state in (Job.STATE_SUCCEEDED, Job.STATE_CANCELLED):
        return True
    return job.state == Job.STATE_FAILED and 0 < job.max_attempts <= job.attempt


class Backoff:
    def __init__(self, config: ClientConfig) -> None:
        self._initial = config.watch_backoff_initial_s
        self._max = config.watch_backoff_max_s
        self._give_up = config.watch_give_up_s
        self._delay = self._initial
        self._failing_since: float | None = None

    def reset(self) -> None:
        self._delay = self._initial
        self._failing_since = None

    def answered(self) -> None:
        """The server is reachable: the give-up clock stops (the delay grows on, should it fail at once)."""
        self._failing_since = None

    def next_delay(self, cause: Exception, attempt_started: float) -> float:
        """The pause before the next attempt; raises UnavailableError once it is time to give up.
        The give-up clock runs from the start of the first attempt the server did not answer (one
        attempt can take gRPC's whole connect timeout, 20 s, to fail)."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = attempt_started
        if self._give_up is not None and now - self._failing_since > self._give_up:
            raise UnavailableError(
                f"server unreachable for more than {self._give_up:g} s, stopped watching: {cause}"
            ) from cause
        delay = self._delay * random.uniform(0.5, 1.0)
        self._delay = min(self._delay * 2, self._max)
        return delay


class _Cursor:
    """Resume point and stop rule shared by the sync and async loops."""

    def __init__(self, after_sequence: int, single_job: bool) -> None:
        self.last = after_sequence
        self.single_job = single_job
        self.last_job: jobs_pb2.Job | None = None

    def accept(self, event: jobs_pb2.JobEvent) -> bool:
        """False for an event already delivered (a replay overlapping what was seen) or a heartbeat."""
        if event.type == jobs_pb2.JobEvent.TYPE_HEARTBEAT:
            # Only a position: resume from it even if no event has arrived yet.
            self.last = max(self.last, event.sequence)
            return False
        if self.last and event.sequence <= self.last:
            return False
        self.last = event.sequence
        self.last_job = event.job
        return True

    def done_after_event(self) -> bool:
        return self.single_job and self.last_job is not None and is_final(self.last_job)

    def done_after_clean_end(self) -> bool:
        # Any other clean end (a server closing streams while shutting down) is resumed like an error.
        job = self.last_job
        return self.single_job and job is not None and _ends_watch(job)

    def over(self, job: jobs_pb2.Job) -> bool:
        """After a clean end with no final event in hand (a watch resumed after the job's final
        event gets none): `job` as GetJob returns it now ends the watch if it is final and has had
        no event after the last one seen."""
        newest = job.transitions[-1].sequence if job.transitions else 0
        return _ends_watch(job) and newest <= self.last


def _ends_watch(job: jobs_pb2.Job) -> bool:
    # WatchJob ends by itself after a final event. Trust that end even for a FAILED job whose
    # attempts the client cannot judge.
    return is_final(job) or job.state == Job.STATE_FAILED


def watch_sync(
    open_stream: Callable[[int], Any],
    after_sequence: int,
    single_job: bool,
    config: ClientConfig,
    current_job: Callable[[], jobs_pb2.Job] | None = None,
) -> Iterator[jobs_pb2.JobEvent]:
    """`open_stream(after_sequence)` starts the server-streaming call (a grpc iterator);
    `current_job()` (WatchJob) reads the job, to tell a watch that is over from a server going away."""
    cursor = _Cursor(after_sequence, single_job)
    backoff = Backoff(config)
    while True:
        opened = time.monotonic()
        call = open_stream(cursor.last)
        answered = False
        try:
            # Returns once the server has answered or the call has ended.
            if _answered(call.initial_metadata()):
                answered = True
                backoff.answered()
            for event in call:
                answered = True
                backoff.reset()
                if cursor.accept(event):
                    yield event
                    if cursor.done_after_event():
                        return
            if cursor.done_after_clean_end() or (current_job is not None and cursor.over(current_job())):
                return
            cause: Exception = UnavailableError("the server closed the watch stream")
        except grpc.RpcError as error:
            if not isinstance(error, grpc.Call) or error.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_rpc_error(error) from error
            cause = error
        finally:
            call.cancel()
        if answered and time.monotonic() - opened >= _HEALTHY_STREAM_S:
            backoff.reset()
        time.sleep(backoff.next_delay(cause, time.monotonic() if answered else opened))


async def watch_async(
    open_stream: Callable[[int], Any],
    after_sequence: int,
    single_job: bool,
    config: ClientConfig,
    current_job: Callable[[], Awaitable[jobs_pb2.Job]] | None = None,
) -> AsyncIterator[jobs_pb2.JobEvent]:
    """As `watch_sync`, over grpc.aio."""
    cursor = _Cursor(after_sequence, single_job)
    backoff = Backoff(config)
    while True:
        opened = time.monotonic()
        call = open_stream(cursor.last)
        answered = False
        try:
            if _answered(await call.initial_metadata()):
                answered = True
                backoff.answered()
            async for event in call:
                answered = True
                backoff.reset()
                if cursor.accept(event):
                    yield event
                    if cursor.done_after_event():
                        return
            if cursor.done_after_clean_end() or (current_job is not None and cursor.over(await current_job())):
                return
            cause: Exception = UnavailableError("the server closed the watch stream")
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_aio_error(error) from error
            cause = error
        finally:
            call.cancel()
        if answered and time.monotonic() - opened >= _HEALTHY_STREAM_S:
            backoff.reset()
        await asyncio.sleep(backoff.next_delay(cause, time.monotonic() if answered else opened))
