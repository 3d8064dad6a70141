"""The Python clients (dsa110.contimg.client).

Three layers: pure helpers; behaviour that needs a server misbehaving on purpose (every status
code, UNAVAILABLE on demand, broken watch streams), served by small fake servicers defined here;
and every client method against the real server over a real channel (the `server` fixture).

The real server runs on the test's event loop, so blocking client calls run in a worker thread
(asyncio.to_thread); calling them on the loop thread would deadlock the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from dsa110.contimg.client import (
    AbortedError,
    AlreadyExistsError,
    AsyncClient,
    CallCancelledError,
    Client,
    ClientConfig,
    ContimgError,
    DataLossError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnknownError,
    image_id,
    image_name,
    job_id,
    job_name,
    ms_name,
    ms_path,
    source_name,
)
from dsa110.contimg.client._methods import with_request_id
from dsa110.contimg.client.errors import from_status
from dsa110.contimg.v1 import images_pb2, images_pb2_grpc, jobs_pb2, jobs_pb2_grpc

Job = jobs_pb2.Job
JobEvent = jobs_pb2.JobEvent

# ---------------------------------------------------------------------------------------------
# Pure helpers


def test_ms_name_round_trip() -> None:
    path = "/stage/dsa110-contimg/ms/science/2025-10-28/2025-10-28T13:30:07.ms"
    name = ms_name(path)
    assert name == "measurementSets/%2Fstage%2Fdsa110-contimg%2Fms%2Fscience%2F2025-10-28%2F2025-10-28T13%3A30%3A07.ms"
    assert ms_path(name) == path
    assert ms_path(path) == path
    assert ms_name("/a b~c_d.e-f+g") == "measurementSets/%2Fa%20b~c_d.e-f%2Bg"
    with pytest.raises(ValueError):
        ms_path("images/3")


def test_other_names() -> None:
    assert image_name(42) == "images/42" and image_id("images/42") == 42
    assert source_name("J083454.9+553421") == "sources/J083454.9+553421"
    assert job_name("job-1") == "jobs/job-1" and job_id("jobs/job-1") == "job-1"
    with pytest.raises(ValueError):
        job_id("jobs/")


def test_config_from_env(tmp_path: Any) -> None:
    assert ClientConfig.from_env({}) == ClientConfig()
    env = {
        "CONTIMG_TARGET": "db.example:443",
        "CONTIMG_TOKEN": "s3cret",
        "CONTIMG_TLS_CA": str(tmp_path / "ca.pem"),
        "CONTIMG_TLS_CERT": str(tmp_path / "c.pem"),
        "CONTIMG_TLS_KEY": str(tmp_path / "k.pem"),
        "CONTIMG_DEADLINE": "2.5",
    }
    config = ClientConfig.from_env(env)
    assert config.target == "db.example:443" and config.token == "s3cret" and config.deadline_s == 2.5
    assert config.uses_tls and config.tls_key == tmp_path / "k.pem"
    assert config.call_metadata() == (("authorization", "Bearer s3cret"),)
    assert ClientConfig.from_env({"CONTIMG_DEADLINE": "0"}).deadline_s is None
    assert ClientConfig.from_env(env, target="other:1").target == "other:1"
    with pytest.raises(ValueError):
        ClientConfig.from_env({"CONTIMG_DEADLINE": "soon"})
    with pytest.raises(ValueError):
        ClientConfig(tls_cert=tmp_path / "c.pem")


def test_channel_options_and_service_config() -> None:
    options = dict(ClientConfig().channel_options())
    assert options["grpc.enable_retries"] == 1
    assert options["grpc.max_receive_message_length"] == 64 * 1024 * 1024
    assert options["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert options["grpc.keepalive_time_ms"] == 30_000
    config = json.loads(str(options["grpc.service_config"]))
    reads, writes = config["methodConfig"]
    read_methods = {e["method"] for e in reads["name"]}
    write_methods = {e["method"] for e in writes["name"]}
    assert {"GetImage", "ListImages", "SearchSources", "GetLightcurve", "WatchJobs"} <= read_methods
    assert {"CreateImage", "CreateJob", "StartJob", "RecordPhotometry", "AppendJobLog"} <= write_methods
    # A delete has no request_id: retrying one that succeeded would report NOT_FOUND.
    assert "DeleteImage" not in read_methods | write_methods
    for entry in (reads, writes):
        policy = entry["retryPolicy"]
        assert policy["maxAttempts"] == 4 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]


def test_request_id_is_stamped_on_writes_only_when_missing() -> None:
    request = jobs_pb2.CreateJobRequest(job=Job(type=Job.TYPE_IMAGE))
    stamped = with_request_id(request)
    assert uuid.UUID(stamped.request_id) and not request.request_id  # the caller's copy untouched
    given = jobs_pb2.StartJobRequest(name="jobs/a", request_id="mine")
    assert with_request_id(given).request_id == "mine"
    read = images_pb2.GetImageRequest(name="images/1")
    assert with_request_id(read) is read


def test_error_details_are_decoded() -> None:
    status = _rich_status(code_pb2.INVALID_ARGUMENT, "bad", "INVALID_FILTER", violations=[("filter", "unknown")])
    error = from_status(grpc.StatusCode.INVALID_ARGUMENT, "bad", status)
    assert isinstance(error, InvalidArgumentError)
    assert error.reason == "INVALID_FILTER" and error.domain == "contimg.dsa110.org"
    assert error.field_violations == [("filter", "unknown")]
    assert "filter: unknown" in str(error)
    bare = from_status(grpc.StatusCode.NOT_FOUND, "gone", None)
    assert isinstance(bare, NotFoundError) and bare.reason == "" and bare.metadata == {}


# ---------------------------------------------------------------------------------------------
# Fake servers: misbehaviour on demand


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _rich_status(
    code: int, message: str, reason: str, *, violations: list[tuple[str, str]] | None = None
) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain="contimg.dsa110.org", metadata={"resource": "x/1"})
    details = [_pack(info)]
    if violations:
        fields = [error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in violations]
        details.append(_pack(error_details_pb2.BadRequest(field_violations=fields)))
    return status_pb2.Status(code=code, message=message, details=details)


EXPECTED_CLASS: dict[grpc.StatusCode, type[ContimgError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNKNOWN: UnknownError,
}


class FakeImages(images_pb2_grpc.ImageServiceServicer):
    """GetImage("images/<CODE>") fails with that status code and rich details."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    async def GetImage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        code_name = request.name.removeprefix("images/")
        if code_name == "slow":
            await asyncio.sleep(5)
        if code_name in grpc.StatusCode.__members__:
            code = grpc.StatusCode[code_name]
            violations = [("name", "bad")] if code == grpc.StatusCode.INVALID_ARGUMENT else None
            rich = _rich_status(code.value[0], f"failed with {code_name}", f"TEST_{code_name}", violations=violations)
            await context.abort_with_status(rpc_status.to_status(rich))
        return images_pb2.Image(name=request.name)


class FakeJobs(jobs_pb2_grpc.JobServiceServicer):
    """CreateJob fails with UNAVAILABLE `fail_creates` times; WatchJobs serves `events` and
    breaks the stream with UNAVAILABLE after each index in `break_after`."""

    def __init__(self) -> None:
        self.fail_creates = 0
        self.create_request_ids: list[str] = []
        self.events = [
            JobEvent(sequence=s, type=JobEvent.TYPE_STATE_CHANGED, job=Job(name="jobs/a")) for s in range(1, 11)
        ]
        self.break_after: set[int] = set()
        self.watch_requests: list[int] = []

    async def CreateJob(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.create_request_ids.append(request.request_id)
        if len(self.create_request_ids) <= self.fail_creates:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "storage busy")
        return Job(name="jobs/" + (request.job_id or "generated"), state=Job.STATE_PENDING)

    async def WatchJobs(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.watch_requests.append(request.after_sequence)
        for event in self.events:
            if event.sequence <= request.after_sequence:
                continue
            yield event
            if event.sequence in self.break_after:
                self.break_after.discard(event.sequence)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        await asyncio.Event().wait()  # a WatchJobs stream never ends by itself

    async def WatchJob(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.watch_requests.append(request.after_sequence)
        states = [Job.STATE_PENDING, Job.STATE_RUNNING, Job.STATE_RUNNING, Job.STATE_SUCCEEDED]
        for sequence, state in enumerate(states, start=1):
            if sequence <= request.after_sequence:
                continue
            yield JobEvent(sequence=sequence, job=Job(name=request.name, state=state))
            if sequence in self.break_after:
                self.break_after.discard(sequence)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        # A server that does not close the stream itself: the client must stop on SUCCEEDED.
        await asyncio.Event().wait()


class Fake:
    def __init__(self) -> None:
        self.images = FakeImages()
        self.jobs = FakeJobs()
        self.server = grpc.aio.server()
        images_pb2_grpc.add_ImageServiceServicer_to_server(self.images, self.server)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(self.jobs, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"

    def config(self, **changes: Any) -> ClientConfig:
        return ClientConfig(target=self.target, watch_backoff_initial_s=0.01, **changes)


@pytest.fixture
async def fake() -> AsyncIterator[Fake]:
    fake = Fake()
    await fake.server.start()
    yield fake
    await fake.server.stop(None)


@pytest.mark.parametrize("code", sorted(EXPECTED_CLASS, key=lambda c: c.name), ids=lambda c: c.name)
async def test_each_code_raises_its_exception(fake: Fake, code: grpc.StatusCode) -> None:
    def check(error: ContimgError) -> None:
        assert type(error) is EXPECTED_CLASS[code]
        assert error.code == code
        assert error.message == f"failed with {code.name}"
        assert error.reason == f"TEST_{code.name}"
        assert error.metadata == {"resource": "x/1"}
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert error.field_violations == [("name", "bad")]

    async with AsyncClient(fake.config()) as client:
        with pytest.raises(ContimgError) as raised:
            await client.get_image(f"images/{code.name}")
        check(raised.value)

    def sync() -> None:
        with Client(fake.config()) as client, pytest.raises(ContimgError) as raised:
            client.get_image(f"images/{code.name}")
        check(raised.value)

    await asyncio.to_thread(sync)


async def test_client_deadline_raises_deadline_exceeded(fake: Fake) -> None:
    async with AsyncClient(fake.config(deadline_s=0.2)) as client:
        with pytest.raises(DeadlineExceededError):
            await client.get_image("images/slow")
        # A per-call override shares the channel.
        fast = client.with_options(deadline_s=0.1)
        with pytest.raises(DeadlineExceededError):
            await fast.get_image("images/slow")


async def test_token_sent_as_bearer_metadata(fake: Fake) -> None:
    async with AsyncClient(fake.config(token="tok")) as client:
        await client.get_image("images/1")
    await asyncio.to_thread(lambda: Client(fake.config(token="tok2")).get_image("images/1"))
    assert [m.get("authorization") for m in fake.images.metadata] == ["Bearer tok", "Bearer tok2"]


async def test_write_retried_on_unavailable_with_one_request_id(fake: Fake) -> None:
    fake.jobs.fail_creates = 2
    async with AsyncClient(fake.config()) as client:
        job = await client.create_job(Job(type=Job.TYPE_IMAGE), "j1")
    assert job.name == "jobs/j1"
    ids = fake.jobs.create_request_ids
    assert len(ids) == 3 and ids[0] and len(set(ids)) == 1

    fake.jobs.fail_creates, fake.jobs.create_request_ids = 5, []
    with pytest.raises(UnavailableError):
        await asyncio.to_thread(lambda: Client(fake.config()).create_job(Job(type=Job.TYPE_IMAGE)))
    assert len(fake.jobs.create_request_ids) == 4  # maxAttempts
    assert len(set(fake.jobs.create_request_ids)) == 1


async def test_async_watch_resumes_after_unavailable(fake: Fake) -> None:
    fake.jobs.break_after = {3, 4, 8}
    async with AsyncClient(fake.config()) as client:
        seen: list[int] = []
        async with contextlib.aclosing(client.watch_jobs()) as events:
            async for event in events:
                seen.append(event.sequence)
                if event.sequence == 10:
                    break
    assert seen == list(range(1, 11))
    assert fake.jobs.watch_requests == [0, 3, 4, 8]


async def test_sync_watch_resumes_after_unavailable(fake: Fake) -> None:
    fake.jobs.break_after = {2, 5}

    def watch() -> list[int]:
        with Client(fake.config()) as client:
            events = client.watch_jobs(after_sequence=1)
            return [e.sequence for e, _ in zip(events, range(9), strict=False)]

    assert await asyncio.to_thread(watch) == list(range(2, 11))
    assert fake.jobs.watch_requests == [1, 2, 5]


async def test_watch_job_stops_after_final_state(fake: Fake) -> None:
    fake.jobs.break_after = {2}
    async with AsyncClient(fake.config()) as client:
        states = [e.job.state async for e in client.watch_job("jobs/a")]
    assert states == [Job.STATE_PENDING, Job.STATE_RUNNING, Job.STATE_RUNNING, Job.STATE_SUCCEEDED]

    def sync() -> list[int]:
        with Client(fake.config()) as client:
            return [e.sequence for e in client.watch_job("jobs/a")]

    fake.jobs.break_after = {1}
    assert await asyncio.to_thread(sync) == [1, 2, 3, 4]


async def test_watch_gives_up_after_configured_time() -> None:
    config = ClientConfig(target="127.0.0.1:1", watch_backoff_initial_s=0.01, watch_give_up_s=0.3)
    async with AsyncClient(config) as client:
        with pytest.raises(UnavailableError):
            async for _ in client.watch_jobs():
                pass

