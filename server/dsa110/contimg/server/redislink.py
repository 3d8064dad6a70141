"""One server's link to Redis: a command client, a pub/sub subscriber, health and reconnection.

Redis is optional and never on the critical path of correctness. The link is "up" only while its
subscriber is connected and answering pings; every command is bounded by `op_timeout_s` and fails
fast (no retries) with `RedisUnavailable`. Any failure marks the link broken: the subscriber loop
tears the connection down, reports "down" to the listeners (health, the event tailer) and tries
again every `retry_s` until Redis answers, then reports "up". Callers therefore never wait on a dead
Redis for longer than one `op_timeout_s`, and while the link is down they do not touch Redis at all.

All state changes and message dispatch happen in the subscriber task, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger("contimg.redis")
T = TypeVar("T")

MessageHandler = Callable[[bytes], None]
StateListener = Callable[[bool], Awaitable[None]]


class RedisUnavailable(Exception):
    """Redis is down, slow or not configured: the caller falls back to the database."""


class RedisLink:
    def __init__(
        self,
        url: str,
        *,
        op_timeout_s: float = 0.5,
        ping_interval_s: float = 0.5,
        retry_s: float = 0.5,
    ):
        self.url = url
        self.op_timeout_s = op_timeout_s
        self.ping_interval_s = ping_interval_s
        self.retry_s = retry_s
        self.up = False
        self.transitions = 0  # how many times the link went up or down (diagnostics, tests)
        self.failures = 0
        self._handlers: dict[str, MessageHandler] = {}
        self._listeners: list[StateListener] = []
        self._broken = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # No retries inside redis-py: one bounded attempt, then the caller falls back.
        common: dict[str, Any] = {
            "socket_connect_timeout": op_timeout_s,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        }
        self.client: Redis = Redis.from_url(url, socket_timeout=op_timeout_s, **common)
        # The subscriber reads with its own timeouts (get_message) and pings to detect a hung server.
        self._sub_client: Redis = Redis.from_url(url, socket_timeout=None, **common)

    def on_message(self, channel: str, handler: MessageHandler) -> None:
        """Call `handler(data)` for each message on `channel` (register before start)."""
        self._handlers[channel] = handler

    def on_state(self, listener: StateListener) -> None:
        """Await `listener(up)` on every up/down change (register before start)."""
        self._listeners.append(listener)

    async def start(self, wait_s: float = 1.0) -> None:
        """Begin connecting; wait up to `wait_s` for the first attempt so a healthy Redis starts up."""
        self._task = asyncio.create_task(self._run(), name="redis-link")
        try:
            await asyncio.wait_for(self._first_attempt.wait(), wait_s)
        except TimeoutError:
            pass

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for client in (self.client, self._sub_client):
            try:
                await client.aclose()
            except (RedisError, OSError):
                pass

    @property
    def usable(self) -> bool:
        """Up, and no command has failed since: worth sending a command to."""
        return self.up and not self._broken.is_set()

    async def command(self, call: Callable[[Redis], Awaitable[T]]) -> T:
        """Run one Redis command, bounded; raise RedisUnavailable (and mark the link broken) on any trouble."""
        if not self.usable:
            raise RedisUnavailable("redis is down")
        try:
            async with asyncio.timeout(self.op_timeout_s):  # unlike wait_for, no task per command
                return await call(self.client)
        except (RedisError, OSError, TimeoutError) as exc:
            self.mark_broken(exc)
            raise RedisUnavailable(str(exc) or type(exc).__name__) from None

    def mark_broken(self, exc: BaseException | None = None) -> None:
        if self.up and not self._broken.is_set():
            log.warning("redis command failed (%s): falling back to the database", exc or "unknown")
        self.failures += 1
        self._broken.set()

    # ---- the subscriber task ----------------------------------------------------------------------

    async def _set_state(self, up: bool) -> None:
        if up == self.up:
            return
        self.up = up
        self.transitions += 1
        if up:
            log.info("redis is up at %s", self.url)
        else:
            log.warning("redis is down at %s: serving from the database alone", self.url)
        for listener in self._listeners:
            try:
                await listener(up)
            except Exception:
                log.exception("redis state listener failed")

    async def _run(self) -> None:
        while True:
            pubsub: PubSub | None = None
            try:
                pubsub = self._sub_client.pubsub()
                await asyncio.wait_for(self._session_start(pubsub), self.op_timeout_s * 4)
                self._broken.clear()
                await self._set_state(True)
                self._first_attempt.set()
                await self._session(pubsub)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as exc:
                if self.up:
                    log.warning("redis connection lost: %s", exc or type(exc).__name__)
            except Exception:
                log.exception("redis subscriber failed")
            finally:
                if pubsub is not None:
                    await _close_quietly(pubsub)
            await self._set_state(False)
            self._first_attempt.set()
            await asyncio.sleep(self.retry_s)

    async def _session_start(self, pubsub: PubSub) -> None:
        if self._handlers:
            await pubsub.subscribe(*self._handlers)
            # The subscribe confirmations, so later reads see only messages and pongs.
            for _ in self._handlers:
                while (await pubsub.get_message(timeout=self.op_timeout_s)) is None:
                    pass
        await self.client.ping()

    async def _session(self, pubsub: PubSub) -> None:
        last_pong = time.monotonic()
        next_ping = last_pong + self.ping_interval_s
        while not self._broken.is_set():
            now = time.monotonic()
            message = await pubsub.get_message(timeout=max(0.0, min(next_ping - now, self.ping_interval_s)))
            now = time.monotonic()
            if message is not None:
                kind = message.get("type")
                if kind == "pong":
                    last_pong = now
                elif kind == "message":
                    channel = message["channel"]
                    name = channel.decode() if isinstance(channel, bytes) else str(channel)
                    handler = self._handlers.get(name)
                    if handler is not None:
                        try:
                            handler(message["data"])
                        except Exception:
                            log.exception("redis message handler for %s failed", name)
            if now >= next_ping:
                await asyncio.wait_for(pubsub.ping(), self.op_timeout_s)
                next_ping = now + self.ping_interval_s
            if now - last_pong > self.ping_interval_s + 2 * self.op_timeout_s + 0.5:
                raise TimeoutError("redis stopped answering pings")


async def _close_quietly(pubsub: PubSub) -> None:
    try:
        await asyncio.wait_for(pubsub.aclose(), 0.5)  # type: ignore[no-untyped-call]
    except (RedisError, OSError, TimeoutError):
        pass
    except Exception:
        log.debug("closing the redis subscriber failed", exc_info=True)
