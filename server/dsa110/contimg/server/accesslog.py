"""One log line per RPC (method, status code, duration, peer, caller: a token's name from the tokens
file, never the token; request_id: the call's `x-request-id` metadata, else a number this process
gives it), at a cost the hot path does not feel. The same records feed the metrics (metrics.py).

Through `logging`, the line cost ~60 us of CPU per call (GetImage 3,976 vs 4,992 calls/s with it off,
2026-12-06): a grpc.aio interceptor around every call, then a LogRecord, its formatting and a write
to stderr per line. Here a unary method's envelope records its own call (Recorder, called by
servicers/envelope.py: no coroutine of ours around the call), each stream's handler is wrapped once
at registration (servicers/handlers.py), and a call only appends a tuple to a list; every FLUSH_S
a task formats the lines waiting and writes them to stderr in one write per 4 KiB (a pipe takes a
write of up to PIPE_BUF bytes whole, so the lines of several `--workers` never interleave mid-line).
The text lines read as the rest of the log (`asctime levelname name message`); `--log-format json`
makes every line, these and the rest, one JSON object. The `contimg.rpc` logger's level still
decides: below INFO, nothing is kept.

The peer is read when the call starts and the code when the handler ends, both inside the RPC's task
while the call is alive (streams.py says why nothing may touch the call after that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TextIO, cast

import grpc

from .rpc_types import Ctx, call_metadata, status_name
from .servicers.admission import FORWARDED_FOR, bearer_token
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from google.protobuf.descriptor import ServiceDescriptor

    from .metrics import ServerMetrics

NAME = "contimg.rpc"
FLUSH_S = 0.1
CHUNK = 4096  # PIPE_BUF on Linux
# Lines waiting for the next flush, at most: ~20 s of calls at the server's fastest. Beyond (stderr
# blocked, the flusher gone), lines are counted as dropped, never kept without bound.
MAX_WAITING = 100_000

log = logging.getLogger(NAME)

# time, method, code, duration ms, peer, messages (-1: unary), caller, request_id
Entry = tuple[float, str, str, float, str, int, str, str]
# What a call keeps, as cheaply as it can (the rest is worked out at the flush, off the call's path):
# end and start (perf_counter), method, code as context.code() gave it (None: OK), peer, messages,
# the call's metadata (None when only the metrics want the call: they need no caller or peer).
Call = tuple[float, float, str, object, str, int, Any]
REQUEST_ID_KEY = "x-request-id"
MAX_REQUEST_ID = 128


class AccessLog:
    """`lines`: write the log lines (--log-rpcs); `metrics`: hand every call to the metrics
    (--metrics-port, metrics.py). Either one needs the calls recorded."""

    def __init__(
        self,
        json_lines: bool = False,
        stream: Callable[[], TextIO] = lambda: sys.stderr,
        *,
        lines: bool = True,
        metrics: ServerMetrics | None = None,
    ):
        self.json_lines = json_lines
        self.lines = lines
        self.metrics = metrics
        self._stream = stream
        self._waiting: list[Call] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._second = -1
        self._stamp = ""
        # Calls without an x-request-id of their own are numbered: a prefix per process (random, so
        # that restarts and --workers never repeat one), then a counter.
        self._prefix = secrets.token_hex(3) + "-"
        self._numbered = 0
        # The caller's name for its bearer token (None: no token); set by the server (app.py).
        self.caller: Callable[[str | None], str] = lambda token: "anonymous" if token is None else "token"

    def wrap(
        self, method: str, behaviour: Callable[..., Awaitable[Any]], streams: bool
    ) -> Callable[..., Awaitable[Any]]:
        """`behaviour` (a servicer method: request, context) with its call logged as `method`."""
        keep = self.keep
        metrics = self.metrics
        started = metrics.started_counts if metrics is not None else None
        sent = metrics.sent_counts if metrics is not None else None
        if metrics is not None:
            metrics.method(method, streams)
        lines = self.lines

        async def logged(request: Any, context: Ctx) -> Any:
            if started is not None:
                started[method] = started.get(method, 0) + 1
                with_lines = lines and log.isEnabledFor(logging.INFO)
            elif lines and log.isEnabledFor(logging.INFO):
                with_lines = True
            else:
                return await behaviour(request, context)
            start = time.perf_counter()
            peer = context.peer() if with_lines else ""
            counting = _Counting(context, method, sent) if streams else None
            code: object = "UNKNOWN"
            try:
                result = await behaviour(request, cast(Ctx, counting) if counting is not None else context)
                code = context.code()
                return result
            except grpc.aio.AbortError:
                code = context.code()  # set by the abort, which has just happened
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                messages = counting.sent if counting is not None else -1
                metadata = call_metadata(context) if with_lines else None  # a tuple: safe to keep
                keep((time.perf_counter(), start, method, code, peer, messages, metadata))

        return logged

    def recorder(self, service: ServiceDescriptor) -> Recorder:
        """What the envelope of `service`'s unary methods records their calls with (servicers/envelope.py),
        in place of a wrapper of their own: one coroutine fewer per call (see Recorder)."""
        return Recorder(self, service)

    def keep(self, entry: Call) -> None:
        """Hold one call's line until the next flush (MAX_WAITING at most)."""
        if len(self._waiting) < MAX_WAITING:
            self._waiting.append(entry)
        else:
            self.dropped += 1

    def record(self, path: str, code: str, peer: str, began: float, metadata: Any) -> None:
        """A call that never reached a servicer (the browser port refused it before its body):
        started and ended, as a Recorder records a call. `began`: its start, by perf_counter."""
        if self.metrics is not None:
            started = self.metrics.started_counts
            started[path] = started.get(path, 0) + 1
        lines = self.lines and log.isEnabledFor(logging.INFO)
        self.keep((time.perf_counter(), began, path, code, peer, -1, metadata if lines else None))

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="access-log")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                self.flush()
            except Exception:  # a line that cannot be formatted must not end the flushing
                log.exception("writing the access log failed")

    def flush(self) -> None:
        calls = self._waiting[:]
        del self._waiting[: len(calls)]
        entries = self._entries(calls)
        if self.metrics is not None:
            self.metrics.observe_calls(entries)
        if self.lines and log.isEnabledFor(logging.INFO):
            self._write([e for e, call in zip(entries, calls, strict=True) if call[6] is not None])

    def _entries(self, calls: list[Call]) -> list[Entry]:
        wall = time.time() - time.perf_counter()  # perf_counter -> time.time, once per flush
        entries: list[Entry] = []
        for end, start, method, code, peer, messages, metadata in calls:
            who = request_id = ""
            if metadata is not None:
                token, given, browser = _identity(metadata)
                who = self.caller(token)
                if browser is not None and peer.startswith("unix:"):  # the browser port's own socket
                    peer = f"web:{browser}"
                if given is None:
                    self._numbered += 1
                    given = f"{self._prefix}{self._numbered:x}"
                request_id = given
            name = code if code.__class__ is str else status_name(code)
            entries.append((end + wall, method, name, (end - start) * 1000, peer, messages, who, request_id))
        return entries

    def _write(self, entries: list[Entry]) -> None:
        if not entries and not self.dropped:
            return
        lines = [self._json(e) if self.json_lines else self._text(e) for e in entries]
        if self.dropped:
            lines.append(self._dropped_line())
        stream = self._stream()
        chunk: list[str] = []
        size = 0
        try:
            for line in lines:
                if size + len(line) > CHUNK and chunk:
                    stream.write("".join(chunk))
                    stream.flush()
                    chunk, size = [], 0
                chunk.append(line)
                size += len(line)
            stream.write("".join(chunk))
            stream.flush()
        except (OSError, ValueError):  # stderr closed or full: the lines are lost, never the calls
            pass

    def _asctime(self, t: float) -> str:
        second = int(t)
        if second != self._second:
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        return f"{self._stamp},{int((t - second) * 1000):03d}"

    def _text(self, e: Entry) -> str:
        t, method, code, ms, peer, sent, who, request_id = e
        messages = f" messages={sent}" if sent >= 0 else ""
        head = f"{self._asctime(t)} INFO {NAME} rpc"
        return (
            f"{head} method={method} code={code} duration_ms={ms:.2f} peer={peer} caller={who} "
            f"request_id={request_id}{messages}\n"
        )

    def _dropped_line(self) -> str:
        dropped, self.dropped = self.dropped, 0
        if self.json_lines:
            message = {"time": _iso(time.time()), "level": "WARNING", "logger": NAME, "dropped_lines": dropped}
            return json.dumps(message) + "\n"
        return f"{self._asctime(time.time())} WARNING {NAME} {dropped} access log lines dropped (stderr too slow)\n"

    @staticmethod
    def _json(e: Entry) -> str:
        t, method, code, ms, peer, sent, who, request_id = e
        line: dict[str, Any] = {"time": _iso(t), "level": "INFO", "logger": NAME, "method": method, "code": code}
        line.update(duration_ms=round(ms, 3), peer=peer, caller=who, request_id=request_id)
        if sent >= 0:
            line["messages"] = sent
        return json.dumps(line) + "\n"


class Recorder:
    """`begin` and `end` of each unary call of one service, called by the envelope (servicers/envelope.py)
    around the method's work: the same records as `AccessLog.wrap`'s, without its coroutine around
    each call (measured in bench/README.md). Streams keep `wrap` (they count their messages)."""

    __slots__ = ("_access", "_paths")

    def __init__(self, access: AccessLog, service: ServiceDescriptor):
        self._access = access
        # Every method the envelope records (not the server streams: `wrap` has them), its series
        # registered now, at 0, before its first call (metrics.ServerMetrics.method).
        self._paths = {m.name: f"/{service.full_name}/{m.name}" for m in service.methods if not m.server_streaming}
        if access.metrics is not None:
            for path in self._paths.values():
                access.metrics.method(path, False)

    def begin(self, name: str, context: Ctx) -> Began | None:
        """None when nothing records this call (below INFO and no metrics)."""
        access = self._access
        path = self._paths[name]
        metrics = access.metrics
        if metrics is not None:
            started = metrics.started_counts
            started[path] = started.get(path, 0) + 1
            with_lines = access.lines and log.isEnabledFor(logging.INFO)
        elif access.lines and log.isEnabledFor(logging.INFO):
            with_lines = True
        else:
            return None
        return (time.perf_counter(), path, context.peer() if with_lines else "", with_lines)

    def end(self, began: Began, code: object, context: Ctx) -> None:
        start, path, peer, with_lines = began
        metadata = call_metadata(context) if with_lines else None
        self._access.keep((time.perf_counter(), start, path, code, peer, -1, metadata))


# A recorded call's start (perf_counter), full method path, peer ("" without lines), with lines.
Began = tuple[float, str, str, bool]


class _Counting:
    """A stream's context that counts the messages written through it (delegates everything else);
    with `totals` (the metrics'), also the method's running total, so a stream's messages are seen
    before it ends."""

    __slots__ = ("_context", "_method", "_totals", "sent")

    def __init__(self, context: Ctx, method: str, totals: dict[str, int] | None):
        self._context = context
        self._method = method
        self._totals = totals
        self.sent = 0

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.sent += 1
        if self._totals is not None:
            self._totals[self._method] = self._totals.get(self._method, 0) + 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _identity(metadata: Any) -> tuple[str | None, str | None, str | None]:
    """(bearer token, x-request-id, x-forwarded-for) of a call's metadata, in one pass
    (admission.bearer_token's rules); the last is the browser's address (web/gateway.py)."""
    token = request_id = browser = None
    for key, value in metadata or ():
        if key == "authorization":
            token = bearer_token(((key, value),))
        elif key == REQUEST_ID_KEY:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            request_id = text.replace(" ", "_")[:MAX_REQUEST_ID]  # one word in the text lines
        elif key == FORWARDED_FOR:
            text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            browser = text.replace(" ", "_")[:MAX_REQUEST_ID]
    return token, request_id, browser


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


class JsonFormatter(logging.Formatter):
    """`--log-format json` for every other log record: one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


class _Departures(logging.Filter):
    """grpc.aio logs "ExecuteBatchError raised in core by servicer method" with a traceback when a
    unary reply cannot be sent because its client has gone, if it has not yet noticed the client's
    departure (a race inside grpc): normal life, already in the call's own log line. Kept at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("ExecuteBatchError raised in core"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_DEPARTURES = _Departures()


def quiet_departures() -> None:
    """Install the filter on grpc's server logger (once)."""
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    if _DEPARTURES not in grpc_log.filters:
        grpc_log.addFilter(_DEPARTURES)
