"""One log line per RPC (method, status code, duration, peer, caller: a token's name from the tokens
file, never the token), at a cost the hot path does not feel.

Through `logging`, the line cost ~60 us of CPU per call (GetImage 3,976 vs 4,992 calls/s with it off,
2026-12-06): a grpc.aio interceptor around every call, then a LogRecord, its formatting and a write
to stderr per line. Here each servicer method is wrapped once, at registration (servicers/handlers.py),
and a call only appends a tuple to a list; every FLUSH_S a task formats the lines waiting and writes
them to stderr in one write per 4 KiB (a pipe takes a write of up to PIPE_BUF bytes whole, so the
lines of several `--workers` never interleave mid-line). The text lines read as the rest of the log
(`asctime levelname name message`); `--log-format json` makes every line, these and the rest, one
JSON object. The `contimg.rpc` logger's level still decides: below INFO, nothing is kept.

The peer is read when the call starts and the code when the handler ends, both inside the RPC's task
while the call is alive (streams.py says why nothing may touch the call after that).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, cast

import grpc

from .rpc_types import Ctx
from .servicers.admission import bearer_token
from .tasks import cancel_and_wait

NAME = "contimg.rpc"
FLUSH_S = 0.1
CHUNK = 4096  # PIPE_BUF on Linux
# Lines waiting for the next flush, at most: ~20 s of calls at the server's fastest. Beyond (stderr
# blocked, the flusher gone), lines are counted as dropped, never kept without bound.
MAX_WAITING = 100_000

log = logging.getLogger(NAME)

# time, method, code, duration ms, peer, messages (-1: unary), caller
Entry = tuple[float, str, str, float, str, int, str]


class AccessLog:
    def __init__(self, json_lines: bool = False, stream: Callable[[], TextIO] = lambda: sys.stderr):
        self.json_lines = json_lines
        self._stream = stream
        self._waiting: list[Entry] = []
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        self._second = -1
        self._stamp = ""
        # The caller's name for its bearer token (None: no token); set by the server (app.py).
        self.caller: Callable[[str | None], str] = lambda token: "anonymous" if token is None else "token"

    def wrap(
        self, method: str, behaviour: Callable[..., Awaitable[Any]], streams: bool
    ) -> Callable[..., Awaitable[Any]]:
        """`behaviour` (a servicer method: request, context) with its call logged as `method`."""
        keep = self.keep

        async def logged(request: Any, context: Ctx) -> Any:
            if not log.isEnabledFor(logging.INFO):
                return await behaviour(request, context)
            start = time.perf_counter()
            peer = context.peer()
            counting = _Counting(context) if streams else None
            code = "UNKNOWN"
            try:
                result = await behaviour(request, cast(Ctx, counting) if counting is not None else context)
                code = _name(context.code())
                return result
            except grpc.aio.AbortError:
                code = _name(context.code())  # set by the abort, which has just happened
                raise
            except asyncio.CancelledError:
                code = "CANCELLED"
                raise
            finally:
                sent = counting.sent if counting is not None else -1
                who = self.caller(bearer_token(context.invocation_metadata()))  # Python-side state: safe here
                keep((time.time(), method, code, (time.perf_counter() - start) * 1000, peer, sent, who))

        return logged

    def keep(self, entry: Entry) -> None:
        """Hold one call's line until the next flush (MAX_WAITING at most)."""
        if len(self._waiting) < MAX_WAITING:
            self._waiting.append(entry)
        else:
            self.dropped += 1

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
        if not self._waiting and not self.dropped:
            return
        entries = self._waiting[:]
        del self._waiting[: len(entries)]
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
        t, method, code, ms, peer, sent, who = e
        messages = f" messages={sent}" if sent >= 0 else ""
        head = f"{self._asctime(t)} INFO {NAME} rpc"
        return f"{head} method={method} code={code} duration_ms={ms:.2f} peer={peer} caller={who}{messages}\n"

    def _dropped_line(self) -> str:
        dropped, self.dropped = self.dropped, 0
        if self.json_lines:
            message = {"time": _iso(time.time()), "level": "WARNING", "logger": NAME, "dropped_lines": dropped}
            return json.dumps(message) + "\n"
        return f"{self._asctime(time.time())} WARNING {NAME} {dropped} access log lines dropped (stderr too slow)\n"

    @staticmethod
    def _json(e: Entry) -> str:
        t, method, code, ms, peer, sent, who = e
        line: dict[str, Any] = {"time": _iso(t), "level": "INFO", "logger": NAME, "method": method, "code": code}
        line.update(duration_ms=round(ms, 3), peer=peer, caller=who)
        if sent >= 0:
            line["messages"] = sent
        return json.dumps(line) + "\n"


class _Counting:
    """A stream's context that counts the messages written through it (delegates everything else)."""

    __slots__ = ("_context", "sent")

    def __init__(self, context: Ctx):
        self._context = context
        self.sent = 0

    async def write(self, message: Any) -> None:
        await self._context.write(message)
        self.sent += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


def _name(code: object) -> str:
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((s.name for s in grpc.StatusCode if s.value[0] == code), str(code))
    return "OK"


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
