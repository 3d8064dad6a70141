"""How one entry of the RPC table (`_methods.Methods`) becomes a method of both clients.

An entry is a descriptor built from a request builder, a function whose signature is the client
method's signature. Its kind (Unary, Collected, Paged, Watch) says what the method does with the
call; the client's transport (SyncTransport or AsyncTransport) says how a call is made. Looked up
on Client or AsyncClient, the descriptor yields that flavour's method, made once per entry, so
the table is the only place that lists the API. The `__get__` overloads tell type checkers what
each flavour's method takes and returns, as precisely as if it had been written out by hand.
"""

from __future__ import annotations

import copy
import functools
import inspect
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from types import MethodType
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, TypeVar, overload

from dsa110.contimg.v1 import jobs_pb2
from google.protobuf.message import Message

from .config import UNSET, ClientConfig, Unset
from .pagers import AsyncPager, Page, Pager
from .watch import watch_async, watch_sync

P = ParamSpec("P")
Q = TypeVar("Q")
R = TypeVar("R")
I = TypeVar("I")  # noqa: E741
M = TypeVar("M", bound=Message)
MR = TypeVar("MR", bound=Message)
PageT = TypeVar("PageT", bound=Page)


class PageRequest(Protocol):
    page_token: str


class ResumableRequest(Protocol):
    after_sequence: int


PQ = TypeVar("PQ", bound=PageRequest)
WQ = TypeVar("WQ", bound=ResumableRequest)
ST = TypeVar("ST", bound="SyncTransport")
AT = TypeVar("AT", bound="AsyncTransport")

JobEvent = jobs_pb2.JobEvent

# ---------------------------------------------------------------------------------------------
# Transports: what a client flavour provides to the methods the table generates


def settings(config: ClientConfig | str | None) -> ClientConfig:
    """A client's settings: from the environment when not given, or just a target."""
    if config is None:
        return ClientConfig.from_env()
    if isinstance(config, str):
        return ClientConfig(target=config)
    return config


class Transport:
    """The parts both flavours share: settings, stubs by service, per-call options."""

    config: ClientConfig
    _stubs: dict[str, Any]
    _owns_channel: bool

    def with_options(self, *, deadline_s: float | Unset | None = UNSET, token: str | Unset | None = UNSET) -> Self:
        """A client sharing this one's channel with another per-call deadline or token; closing
        it leaves the channel open (the original's close closes it)."""
        clone = copy.copy(self)
        clone._owns_channel = False
        changes = {k: v for k, v in (("deadline_s", deadline_s), ("token", token)) if v is not UNSET}
        clone.config = self.config.replace(**changes)
        return clone

    def _stub(self, service: str, method: str) -> Any:
        return getattr(self._stubs[service], method)


class SyncTransport(Transport, ABC):
    @abstractmethod
    def _invoke(self, rpc: Rpc[..., Any, R], request: object) -> R:
        """One unary call; failures raise ContimgError."""

    @abstractmethod
    def _collect(self, rpc: Rpc[..., Any, MR], request: object) -> MR:
        """A server-streaming call whose messages are merged into one response."""


class AsyncTransport(Transport, ABC):
    @abstractmethod
    async def _invoke(self, rpc: Rpc[..., Any, R], request: object) -> R:
        """One unary call; failures raise ContimgError."""

    @abstractmethod
    async def _collect(self, rpc: Rpc[..., Any, MR], request: object) -> MR:
        """A server-streaming call whose messages are merged into one response."""


# ---------------------------------------------------------------------------------------------
# Requests


def with_page_token(request: PQ, token: str) -> PQ:
    if not token:
        return request
    page = copy.deepcopy(request)
    page.page_token = token
    return page


def resumed(request: WQ, after_sequence: int) -> WQ:
    if after_sequence == request.after_sequence:
        return request
    again = copy.deepcopy(request)
    again.after_sequence = after_sequence
    return again


def with_request_id(request: M) -> M:
    """Stamps a fresh request_id on a write whose caller left it empty.

    This is what makes the write retry policy safe: every attempt of one call carries the same
    id, so the server applies the write once and answers the retries with the first result.
    The caller's message is copied, never modified.
    """
    field = request.DESCRIPTOR.fields_by_name.get("request_id")
    if field is None or getattr(request, field.name):
        return request
    stamped = copy.deepcopy(request)
    setattr(stamped, field.name, str(uuid.uuid4()))
    return stamped


# ---------------------------------------------------------------------------------------------
# Table entries


class Rpc(Generic[P, Q, R], ABC):
    """One RPC: where it lives, how its request is built, what it returns.

    Subclasses say what a client method does with the call, once per flavour (`_sync_method`,
    `_async_method`), and declare `__get__` so that type checkers see that method's type.
    """

    def __init__(
        self,
        service: str,
        method: str,
        build: Callable[P, Q],
        response: type[R],
        waits: Callable[[Any], float] | None = None,
    ) -> None:
        # `request` tells a complete request from its fields only while it cannot be positional.
        request = inspect.signature(build).parameters.get("request")
        if request is None or request.kind is not inspect.Parameter.KEYWORD_ONLY or request.default is not None:
            raise TypeError(f"{build.__name__}() needs a keyword-only `request=None` parameter")
        self.service = service
        self.method = method
        self.build = build
        self.response = response
        self.waits = waits

    def timeout(self, deadline_s: float | None, request: object) -> float | None:
        """The call's deadline: the client's, plus however long the request asks the server to
        wait (a long-poll), so that the deadline bounds the call's work, not the wait asked for."""
        if deadline_s is None or self.waits is None:
            return deadline_s
        return deadline_s + max(0.0, self.waits(request))

    def request(self, *args: P.args, **kwargs: P.kwargs) -> Q:
        """The request to send. A complete `request=` excludes every other argument, as in
        Google's generated clients: silently dropping them would send something the caller did
        not ask for. Any argument passed counts, even one equal to its default."""
        if kwargs.get("request") is not None and (args or len(kwargs) > 1):
            positional = list(inspect.signature(self.build).parameters)[: len(args)]
            given = ", ".join([*positional, *(name for name in kwargs if name != "request")])
            raise ValueError(
                f"{self.build.__name__}() got request= and {given}: set those fields on the request"
                " message, or pass them without request="
            )
        return self.build(*args, **kwargs)

    @functools.cached_property
    def _sync(self) -> Callable[..., Any]:
        return self._expose(self._sync_method(), self._returns(sync=True))

    @functools.cached_property
    def _async(self) -> Callable[..., Any]:
        return self._expose(self._async_method(), self._returns(sync=False))

    def _bind(self, instance: object, owner: type[object]) -> Any:
        """The method for the flavour of `owner`: unbound on the class, bound on an instance.
        Looked up on the table itself (no flavour), the entry is returned."""
        if issubclass(owner, SyncTransport):
            method = self._sync
        elif issubclass(owner, AsyncTransport):
            method = self._async
        else:
            return self
        return method if instance is None else MethodType(method, instance)

    def _expose(self, method: Callable[..., Any], returns: object) -> Callable[..., Any]:
        """Gives a generated method the builder's name, docstring and parameters (plus self),
        so help() and IDEs show `get_image(self, /, name='', *, request=None) -> Image`."""
        functools.update_wrapper(
            method, self.build, assigned=("__module__", "__name__", "__qualname__", "__doc__"), updated=()
        )
        signature = inspect.signature(self.build)
        this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
        target: Any = method
        target.__signature__ = signature.replace(
            parameters=[this, *signature.parameters.values()], return_annotation=returns
        )
        return method

    def _returns(self, *, sync: bool) -> object:
        return self.response

    @abstractmethod
    def _sync_method(self) -> Callable[..., Any]:
        """The method of Client: takes the client, then the builder's arguments."""

    @abstractmethod
    def _async_method(self) -> Callable[..., Any]:
        """The method of AsyncClient, likewise."""


class Unary(Rpc[P, M, R]):
    """A unary RPC: the method returns the response (async: a coroutine of it). Requests with a
    `request_id` get one, so that retried writes are applied once."""

    @overload
    def __get__(self, instance: None, owner: type[ST]) -> Callable[Concatenate[ST, P], R]: ...
    @overload
    def __get__(self, instance: None, owner: type[AT]) -> Callable[Concatenate[AT, P], Coroutine[Any, Any, R]]: ...
    @overload
    def __get__(self, instance: None, owner: type[object]) -> Self: ...
    @overload
    def __get__(self, instance: SyncTransport, owner: type[object]) -> Callable[P, R]: ...
    @overload
    def __get__(self, instance: AsyncTransport, owner: type[object]) -> Callable[P, Coroutine[Any, Any, R]]: ...
    def __get__(self, instance: object, owner: type[object]) -> Any:
        return self._bind(instance, owner)

    def _sync_method(self) -> Callable[Concatenate[SyncTransport, P], R]:
        def method(client: SyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return client._invoke(self, with_request_id(self.request(*args, **kwargs)))

        return method

    def _async_method(self) -> Callable[Concatenate[AsyncTransport, P], Coroutine[Any, Any, R]]:
        async def method(client: AsyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return await client._invoke(self, with_request_id(self.request(*args, **kwargs)))

        return method


class Collected(Unary[P, M, MR]):
    """A server-streaming RPC read to its end: the method returns the messages merged into one."""

    def _sync_method(self) -> Callable[Concatenate[SyncTransport, P], MR]:
        def method(client: SyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> MR:
            return client._collect(self, self.request(*args, **kwargs))

        return method

    def _async_method(self) -> Callable[Concatenate[AsyncTransport, P], Coroutine[Any, Any, MR]]:
        async def method(client: AsyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> MR:
            return await client._collect(self, self.request(*args, **kwargs))

        return method


class Paged(Rpc[P, PQ, PageT], Generic[P, PQ, PageT, I]):
    """A List/Search RPC: the method returns a pager over every page; `items` picks the repeated
    field holding one page's items."""

    def __init__(
        self,
        service: str,
        method: str,
        build: Callable[P, PQ],
        response: type[PageT],
        items: Callable[[PageT], Sequence[I]],
    ) -> None:
        super().__init__(service, method, build, response)
        self.items = items

    @overload
    def __get__(self, instance: None, owner: type[ST]) -> Callable[Concatenate[ST, P], Pager[PageT, I]]: ...
    @overload
    def __get__(self, instance: None, owner: type[AT]) -> Callable[Concatenate[AT, P], AsyncPager[PageT, I]]: ...
    @overload
    def __get__(self, instance: None, owner: type[object]) -> Self: ...
    @overload
    def __get__(self, instance: SyncTransport, owner: type[object]) -> Callable[P, Pager[PageT, I]]: ...
    @overload
    def __get__(self, instance: AsyncTransport, owner: type[object]) -> Callable[P, AsyncPager[PageT, I]]: ...
    def __get__(self, instance: object, owner: type[object]) -> Any:
        return self._bind(instance, owner)

    def _returns(self, *, sync: bool) -> object:
        return f"{'' if sync else 'Async'}Pager[{self.response.__name__}]"

    def _sync_method(self) -> Callable[Concatenate[SyncTransport, P], Pager[PageT, I]]:
        def method(client: SyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> Pager[PageT, I]:
            # Built now, so that bad arguments fail at the call rather than at the first page.
            request = self.request(*args, **kwargs)
            return Pager(lambda token: client._invoke(self, with_page_token(request, token)), self.items)

        return method

    def _async_method(self) -> Callable[Concatenate[AsyncTransport, P], AsyncPager[PageT, I]]:
        def method(client: AsyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> AsyncPager[PageT, I]:
            request = self.request(*args, **kwargs)
            return AsyncPager(lambda token: client._invoke(self, with_page_token(request, token)), self.items)

        return method


class Watch(Rpc[P, WQ, JobEvent]):
    """A job-event stream, reopened after UNAVAILABLE where it broke off (see watch.py).

    `single_job` (WatchJob) ends the watch at the job's final state; such a watch also rereads
    the job with GetJob of the same service, to tell a watch that is over from a server going away.
    """

    def __init__(self, service: str, method: str, build: Callable[P, WQ], *, single_job: bool) -> None:
        super().__init__(service, method, build, JobEvent)
        self.single_job = single_job

    @overload
    def __get__(self, instance: None, owner: type[ST]) -> Callable[Concatenate[ST, P], Iterator[JobEvent]]: ...
    @overload
    def __get__(self, instance: None, owner: type[AT]) -> Callable[Concatenate[AT, P], AsyncIterator[JobEvent]]: ...
    @overload
    def __get__(self, instance: None, owner: type[object]) -> Self: ...
    @overload
    def __get__(self, instance: SyncTransport, owner: type[object]) -> Callable[P, Iterator[JobEvent]]: ...
    @overload
    def __get__(self, instance: AsyncTransport, owner: type[object]) -> Callable[P, AsyncIterator[JobEvent]]: ...
    def __get__(self, instance: object, owner: type[object]) -> Any:
        return self._bind(instance, owner)

    def _returns(self, *, sync: bool) -> object:
        return Iterator[JobEvent] if sync else AsyncIterator[JobEvent]

    def _calls(self, client: Transport, request: WQ) -> tuple[Callable[[int], Any], Callable[[], Any] | None]:
        """The stream opener (from a sequence) and, for a single job, the job reader: raw grpc
        calls, whose UNAVAILABLE the watch loop resumes after instead of raising."""
        stub = client._stub(self.service, self.method)
        metadata = client.config.call_metadata()

        def open_stream(after: int) -> Any:
            return stub(resumed(request, after), timeout=None, metadata=metadata)

        if not self.single_job:
            return open_stream, None
        get_job = jobs_pb2.GetJobRequest(name=getattr(request, "name"))  # noqa: B009
        reader = functools.partial(
            client._stub(self.service, "GetJob"), get_job, timeout=client.config.deadline_s, metadata=metadata
        )
        return open_stream, reader

    def _sync_method(self) -> Callable[Concatenate[SyncTransport, P], Iterator[JobEvent]]:
        def method(client: SyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[JobEvent]:
            request = self.request(*args, **kwargs)
            open_stream, reader = self._calls(client, request)
            return watch_sync(open_stream, request.after_sequence, self.single_job, client.config, reader)

        return method

    def _async_method(self) -> Callable[Concatenate[AsyncTransport, P], AsyncIterator[JobEvent]]:
        def method(client: AsyncTransport, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[JobEvent]:
            request = self.request(*args, **kwargs)
            open_stream, reader = self._calls(client, request)
            return watch_async(open_stream, request.after_sequence, self.single_job, client.config, reader)

        return method


# ---------------------------------------------------------------------------------------------
# Decorators that turn a request builder into a table entry


def unary(
    service: str, method: str, response: type[R], *, waits: Callable[[Any], float] | None = None
) -> Callable[[Callable[P, M]], Unary[P, M, R]]:
    """`waits(request)`: seconds the server may hold the call by request (a long-poll), added to
    the client's deadline."""
    return lambda build: Unary(service, method, build, response, waits)


def collected(service: str, method: str, response: type[MR]) -> Callable[[Callable[P, M]], Collected[P, M, MR]]:
    return lambda build: Collected(service, method, build, response)


def paged(
    service: str, method: str, response: type[PageT], items: Callable[[PageT], Sequence[I]]
) -> Callable[[Callable[P, PQ]], Paged[P, PQ, PageT, I]]:
    return lambda build: Paged(service, method, build, response, items)


def watch(service: str, method: str, *, single_job: bool) -> Callable[[Callable[P, WQ]], Watch[P, WQ]]:
    return lambda build: Watch(service, method, build, single_job=single_job)
