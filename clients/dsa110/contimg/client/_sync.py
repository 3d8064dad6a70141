"""The blocking client, on the synchronous grpc channel API.

It never touches an event loop, so it works the same in scripts, threads and inside a running
loop (a Jupyter cell), where driving an asyncio client to completion would fail.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, Concatenate, Self, TypeVar, cast

import grpc
from dsa110.contimg.v1 import jobs_pb2
from google.protobuf.message import Message

from . import _methods as m
from ._methods import P, PagedRpc, PageRequest, ResumableRequest, Rpc
from .config import UNSET, ClientConfig, Unset
from .errors import from_rpc_error
from .pagers import Page, Pager
from .watch import watch_sync

Q = TypeVar("Q", bound=Message)
R = TypeVar("R", bound=Message)
I = TypeVar("I")  # noqa: E741
PQ = TypeVar("PQ", bound=PageRequest)
PageT = TypeVar("PageT", bound=Page)
WQ = TypeVar("WQ", bound=ResumableRequest)
T = TypeVar("T")


class _ChannelOwner:
    def __init__(self, config: ClientConfig | str | None = None, *, channel: grpc.Channel | None = None) -> None:
        if config is None:
            config = ClientConfig.from_env()
        elif isinstance(config, str):
            config = ClientConfig(target=config)
        self.config = config
        if channel is None:
            options = config.channel_options()
            if config.uses_tls:
                channel = grpc.secure_channel(config.target, config.credentials(), options=options)
            else:
                channel = grpc.insecure_channel(config.target, options=options)
        self._channel = channel
        self._owns_channel = True  # a clone from with_options shares it and leaves it open
        self._stubs = {service: stub(channel) for service, stub in m.STUBS.items()}

    def with_options(self, *, deadline_s: float | Unset | None = UNSET, token: str | Unset | None = UNSET) -> Self:
        """A client sharing this one's channel with another per-call deadline or token; closing
        it leaves the channel open (the original's close closes it)."""
        clone = copy.copy(self)
        clone._owns_channel = False
        changes = {k: v for k, v in (("deadline_s", deadline_s), ("token", token)) if v is not UNSET}
        clone.config = self.config.replace(**changes)
        return clone

    def _stub(self, rpc: Rpc[..., Any, Any]) -> Any:
        return getattr(self._stubs[rpc.service], rpc.method)

    def _invoke(self, rpc: Rpc[..., Any, T], request: object) -> T:
        try:
            return cast(
                T,
                self._stub(rpc)(request, timeout=self.config.deadline_s, metadata=self.config.call_metadata()),
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error

    def _collect(self, rpc: Rpc[..., Any, R], request: object) -> R:
        # The deadline covers the whole stream: a lightcurve is a bounded read, not a watch.
        merged = rpc.response()
        try:
            for response in self._stub(rpc)(
                request, timeout=self.config.deadline_s, metadata=self.config.call_metadata()
            ):
                merged.MergeFrom(response)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error
        return merged

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unary(rpc: Rpc[P, Q, R]) -> Callable[Concatenate[_ChannelOwner, P], R]:
    def method(self: _ChannelOwner, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._invoke(rpc, m.with_request_id(rpc.build(*args, **kwargs)))

    return m.expose(method, rpc, rpc.response)


def _collect(rpc: Rpc[P, Q, R]) -> Callable[Concatenate[_ChannelOwner, P], R]:
    def method(self: _ChannelOwner, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._collect(rpc, rpc.build(*args, **kwargs))

    return m.expose(method, rpc, rpc.response)


def _paged(rpc: PagedRpc[P, PQ, PageT, I]) -> Callable[Concatenate[_ChannelOwner, P], Pager[PageT, I]]:
    def method(self: _ChannelOwner, /, *args: P.args, **kwargs: P.kwargs) -> Pager[PageT, I]:
        request = rpc.build(*args, **kwargs)
        return Pager(lambda token: self._invoke(rpc, m.with_page_token(request, token)), rpc.items)

    return m.expose(method, rpc, f"Pager[{rpc.response.__name__}]")


def _watch(
    rpc: Rpc[P, WQ, jobs_pb2.JobEvent], *, single_job: bool
) -> Callable[Concatenate[_ChannelOwner, P], Iterator[jobs_pb2.JobEvent]]:
    def method(self: _ChannelOwner, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[jobs_pb2.JobEvent]:
        request = rpc.build(*args, **kwargs)
        stub = self._stub(rpc)
        metadata = self.config.call_metadata()

        def open_stream(after: int) -> Any:
            return stub(m.resumed(request, after), timeout=None, metadata=metadata)

        reader = None
        if single_job:  # WatchJob: the job itself tells a watch that is over from a server going away
            get_job = m.get_job.build(getattr(request, "name"))  # noqa: B009
            reader = partial(self._stub(m.get_job), get_job, timeout=self.config.deadline_s, metadata=metadata)
        return watch_sync(open_stream, request.after_sequence, single_job, self.config, reader)

    return m.expose(method, rpc, Iterator[jobs_pb2.JobEvent])


class Client(_ChannelOwner):
    """Blocking client of the four contimg services.

    `Client()` reads its settings from the environment (ClientConfig.from_env); `Client("host:port")`
    or `Client(ClientConfig(...))` sets them explicitly. Every method raises a ContimgError
    subclass on failure. Use as a context manager, or call close().
    """

    get_image = _unary(m.get_image)
    batch_get_images = _unary(m.batch_get_images)
    list_images = _paged(m.list_images)
    create_image = _unary(m.create_image)
    update_image = _unary(m.update_image)
    delete_image = _unary(m.delete_image)
    search_images = _paged(m.search_images)

    get_measurement_set = _unary(m.get_measurement_set)
    batch_get_measurement_sets = _unary(m.batch_get_measurement_sets)
    list_measurement_sets = _paged(m.list_measurement_sets)
    create_measurement_set = _unary(m.create_measurement_set)
    update_measurement_set = _unary(m.update_measurement_set)
    advance_measurement_set_stage = _unary(m.advance_measurement_set_stage)
    delete_measurement_set = _unary(m.delete_measurement_set)

    get_source = _unary(m.get_source)
    batch_get_sources = _unary(m.batch_get_sources)
    list_sources = _paged(m.list_sources)
    search_sources = _paged(m.search_sources)
    get_lightcurve = _collect(m.get_lightcurve)
    record_photometry = _unary(m.record_photometry)

    get_job = _unary(m.get_job)
    list_jobs = _paged(m.list_jobs)
    create_job = _unary(m.create_job)
    start_job = _unary(m.start_job)
    report_job_progress = _unary(m.report_job_progress)
    succeed_job = _unary(m.succeed_job)
    fail_job = _unary(m.fail_job)
    cancel_job = _unary(m.cancel_job)
    retry_job = _unary(m.retry_job)
    append_job_log = _unary(m.append_job_log)
    list_job_log_entries = _paged(m.list_job_log_entries)
    watch_job = _watch(m.watch_job, single_job=True)
    watch_jobs = _watch(m.watch_jobs, single_job=False)
