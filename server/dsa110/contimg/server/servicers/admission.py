"""Admission of every contract RPC: bearer-token authorization and the capacity each kind may use.

Tokens: writes need a write token; reads need a token only when configured; a token that is
presented must be valid. Compared in constant time and never logged.

Capacity: three pools, so that no kind of caller can take another's. Unary reads (and lightcurve
streams) share `reads`; writes, which only authorized callers reach, have `writes` to themselves
(2,000 idle anonymous watch streams once took every slot, and the pipeline's writes got
RESOURCE_EXHAUSTED; ClaimJob's long-poll waits in this pool too: only write-token holders, the
workers, can hold its slots, and a wait never takes a slot from the 256 readers); watch streams,
which live for hours, have `watches` in all and `watches_per_caller` each (a caller is its token, or
without one its IP address). A slot is held until the call is done, reply sent or client gone, not
only until the handler returns: a reply waiting for a client that stopped reading holds memory, so
it holds its slot (2,000 such replies held ~1 GB). A call over its pool's limit gets
RESOURCE_EXHAUSTED with ErrorInfo (gRPC's own maximum_concurrent_rpcs refuses with a bare status and
cannot tell callers apart). Health and reflection are neither checked nor limited: load balancers
and grpcurl keep working, and an overloaded server is still a live one.

Checked inside each servicer method's wrapper (servicers/envelope.py), not by interceptors: grpc.aio
runs every server interceptor as its own step of every call, measured at ~7 us each (a third of a
GetImage's own work); the checks themselves cost ~1 us. Writes are registered so that this check
runs before their request is read (servicers/handlers.py): a refused caller's body is not read,
let alone decoded.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, cast

import grpc
from google.rpc import code_pb2

from ..rpc_types import Ctx, call_metadata
from .status import rich_status

FORWARDED_FOR = "x-forwarded-for"  # set by the browser port (web/gateway.py), trusted from it alone

OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
READ_PREFIXES = ("Get", "List", "Search", "BatchGet", "Watch")


def is_read(method: str) -> bool:
    return method.rsplit("/", 1)[-1].startswith(READ_PREFIXES)


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    write_tokens: frozenset[str]
    read_tokens: frozenset[str]
    require_read_token: bool = False
    allow_anonymous_writes: bool = False
    names: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # token -> caller name

    def caller_name(self, token: str | None) -> str:
        """Who a call came from, for the log and the records it writes (a job transition's `actor`):
        its token's name, else what kind of caller it was. Never the token."""
        if token is None:
            return "anonymous"
        name = self.names.get(token)
        if name is not None:
            return name
        return "unnamed-token" if token in self.write_tokens or token in self.read_tokens else "invalid-token"

    @staticmethod
    def _match(token: str, candidates: Iterable[str]) -> bool:
        found = False
        for candidate in candidates:  # no early exit: timing does not reveal which token matched
            found |= hmac.compare_digest(token.encode(), candidate.encode())
        return found

    def decide(self, method: str, token: str | None) -> tuple[int, str, str] | None:
        """None to allow, else (code, reason, message)."""
        if method.startswith(OPEN_PREFIXES):
            return None
        is_writer = token is not None and self._match(token, self.write_tokens)
        is_reader = is_writer or (token is not None and self._match(token, self.read_tokens))
        if token is not None and not is_reader:
            return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "the bearer token is not valid"
        if is_read(method):
            if self.require_read_token and not is_reader:
                return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "this server requires a bearer token"
            return None
        if is_writer or (token is None and self.allow_anonymous_writes):
            return None
        if token is None:
            return code_pb2.UNAUTHENTICATED, "UNAUTHENTICATED", "writes require a bearer token (authorization metadata)"
        return code_pb2.PERMISSION_DENIED, "PERMISSION_DENIED", "this token may only read"


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else ""
    return None


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity per kind of call (0: unlimited); see the module docstring."""

    reads: int = 256
    writes: int = 1000
    watches: int = 1000
    watches_per_caller: int = 100


def _busy(pool: str, limit: int, what: str) -> grpc.Status:
    return rich_status(
        code_pb2.RESOURCE_EXHAUSTED,
        f"too many {what} in progress (at most {limit}); retry with backoff",
        "RESOURCE_EXHAUSTED",
        metadata={"limit": pool, "max": str(limit)},
    )


class _Pool:
    __slots__ = ("active", "busy", "limit")

    def __init__(self, name: str, limit: int, what: str):
        self.limit = limit
        self.active = 0  # the server runs on one event loop: a plain counter is race-free
        self.busy = _busy(name, limit, what)

    def leave(self, _context: Ctx) -> None:
        self.active -= 1


def caller_of(token: str | None, context: Ctx) -> str:
    """Who a call comes from, for per-caller limits: its token if it has one, else its IP address."""
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    peer: str = context.peer()  # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "unix:..."
    if peer.startswith("unix:"):  # the browser port's private socket (web/): the browser's own address
        peer = next((str(v) for k, v in call_metadata(context) if k == FORWARDED_FOR), peer)
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


def _when_done(context: Ctx, callback: Callable[[Ctx], None]) -> None:
    """`callback(context)` once the call is done (grpc runs it when the RPC's task ends)."""
    context.add_done_callback(cast(Any, callback))  # the stubs' _DoneCallback is a class, not a Protocol


class Admission:
    def __init__(self, policy: TokenPolicy, limits: Limits | None = None):
        self.policy = policy
        self.limits = limits or Limits(0, 0, 0, 0)
        self.reads = _Pool("reads", self.limits.reads, "reads")
        self.writes = _Pool("writes", self.limits.writes, "writes")
        self.watches = _Pool("watches", self.limits.watches, "watch streams")
        self._per_caller_busy = _busy("watches_per_caller", self.limits.watches_per_caller, "watch streams of yours")
        self.watchers: dict[str, int] = {}  # caller -> open watch streams

    def admit(self, method: str, context: Ctx) -> grpc.Status | None:
        """None when the call may run (its slot is given back when the call is done), else the
        status to abort it with."""
        token = bearer_token(call_metadata(context))
        if (refused := self.refusal(method, token)) is not None:
            return refused
        if method.startswith("Watch"):
            return self._admit_watch(token, context)
        pool = self.reads if is_read(method) else self.writes
        if pool.limit:
            if pool.active >= pool.limit:
                return pool.busy
            pool.active += 1
            _when_done(context, pool.leave)
        return None

    def refusal(self, method: str, token: str | None) -> grpc.Status | None:
        """The token check alone, under the policy in force now (the browser port asks it before it
        reads a body: web/intake.py)."""
        denied = self.policy.decide(method, token)
        if denied is None:
            return None
        code, reason, message = denied
        return rich_status(code, message, reason)

    def actor(self, context: Ctx) -> str:
        """Who an admitted write comes from, to record with what it changes (TokenPolicy.caller_name,
        under the policy in force now). Asked by writes only: reads pay nothing for it."""
        return self.policy.caller_name(bearer_token(call_metadata(context)))

    def _admit_watch(self, token: str | None, context: Ctx) -> grpc.Status | None:
        pool = self.watches
        per_caller = self.limits.watches_per_caller
        if not pool.limit and not per_caller:
            return None
        if pool.limit and pool.active >= pool.limit:
            return pool.busy
        caller = caller_of(token, context) if per_caller else ""
        if per_caller:
            if self.watchers.get(caller, 0) >= per_caller:
                return self._per_caller_busy
            self.watchers[caller] = self.watchers.get(caller, 0) + 1
        pool.active += 1
        _when_done(context, partial(self._leave_watch, caller))
        return None

    def _leave_watch(self, caller: str, _context: Ctx) -> None:
        self.watches.active -= 1
        if caller:
            left = self.watchers[caller] - 1
            if left:
                self.watchers[caller] = left
            else:
                del self.watchers[caller]


# For servicers built without a server (tests of a servicer alone): everything is allowed.
OPEN = Admission(TokenPolicy(frozenset(), frozenset(), allow_anonymous_writes=True))
