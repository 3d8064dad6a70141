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
import inspect
import itertools
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
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
    is_final,
    job_id,
    job_name,
    ms_name,
    ms_path,
    source_name,
)
from dsa110.contimg.client._methods import Methods
from dsa110.contimg.client._rpc import Rpc, unary, with_request_id
from dsa110.contimg.client.config import RetryPolicy, parse_deadline
from dsa110.contimg.client.errors import from_status
from dsa110.contimg.client.watch import Backoff
from dsa110.contimg.v1 import images_pb2, images_pb2_grpc, jobs_pb2, jobs_pb2_grpc, measurement_sets_pb2, sources_pb2
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

Job = jobs_pb2.Job
JobEvent = jobs_pb2.JobEvent
ENGINES = ("sqlite", "postgres")

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


def _public_methods(cls: type) -> dict[str, tuple[inspect.Signature, str | None]]:
    """Each public method's signature and docstring, the return type in its blocking form: what
    an AsyncClient coroutine returns is what the Client method returns, and AsyncPager and
    AsyncIterator are the async forms of Pager and Iterator."""
    methods: dict[str, tuple[inspect.Signature, str | None]] = {}
    for name, member in inspect.getmembers(cls, inspect.isfunction):
        if not name.startswith("_"):
            signature = inspect.signature(member)
            blocking = re.sub(r"\bAsync(?=Pager|Iterator)", "", str(signature.return_annotation))
            methods[name] = (signature.replace(return_annotation=blocking), inspect.getdoc(member))
    return methods


def test_sync_and_async_clients_have_the_same_methods() -> None:
    methods = _public_methods(Client)
    assert _public_methods(AsyncClient) == methods
    # One method per RPC of the four services, named after it; they are all there.
    rpcs = {
        re.sub(r"(?<!^)(?=[A-Z])", "_", method.name).lower()
        for module in (images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods.keys() - rpcs == {"close", "with_options"} and rpcs <= methods.keys()
    # AsyncClient's coroutines are exactly the methods that return a result rather than an
    # iterable (pager, event stream) or a client; Client has none.
    iterables = {
        name for name, (signature, _) in methods.items() if re.search("Pager|Iterator", signature.return_annotation)
    }
    coroutines = {name for name in methods if inspect.iscoroutinefunction(getattr(AsyncClient, name))}
    assert coroutines == methods.keys() - iterables - {"with_options"}
    assert not any(inspect.iscoroutinefunction(getattr(Client, name)) for name in methods)


ENTRIES = sorted(name for name, entry in vars(Methods).items() if isinstance(entry, Rpc))


@pytest.mark.parametrize("name", ENTRIES)
async def test_request_with_any_other_argument_raises_value_error(name: str) -> None:
    """As in Google's generated clients: a complete request and fields beside it conflict. Each
    argument is passed with its default value; passing it at all is the conflict."""
    entry = vars(Methods)[name]
    request = entry.build()
    parameters = [p for p in inspect.signature(entry.build).parameters.values() if p.name != "request"]
    calls = [((), {p.name: p.default}, p.name) for p in parameters]
    calls.append(((parameters[0].default,), {}, parameters[0].name))  # positionally
    config = ClientConfig(target="127.0.0.1:1", deadline_s=1)  # nothing listens: no call may be made

    with Client(config) as client:
        for args, kwargs, given in calls:
            with pytest.raises(ValueError, match=rf"^{name}\(\) got request= and {given}:"):
                getattr(client, name)(*args, request=request, **kwargs)
    async with AsyncClient(config) as async_client:
        for args, kwargs, given in calls:
            with pytest.raises(ValueError, match=rf"^{name}\(\) got request= and {given}:"):
                result = getattr(async_client, name)(*args, request=request, **kwargs)
                if inspect.iscoroutine(result):
                    await result


def test_a_table_entry_needs_a_keyword_only_request() -> None:
    """Otherwise a request passed positionally would pass for a field, and the conflict above go
    unnoticed."""

    def positional(name: str = "", request: images_pb2.GetImageRequest | None = None) -> Any:
        return request

    def missing(name: str = "") -> Any:
        return images_pb2.GetImageRequest(name=name)

    for build in (positional, missing):
        with pytest.raises(TypeError, match="keyword-only `request=None`"):
            unary("dsa110.contimg.v1.ImageService", "GetImage", images_pb2.Image)(build)


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

    def sync() -> None:
        with Client(fake.config(token="tok2")) as sync_client:
            sync_client.get_image("images/1")

    await asyncio.to_thread(sync)
    assert [m.get("authorization") for m in fake.images.metadata] == ["Bearer tok", "Bearer tok2"]


async def test_write_retried_on_unavailable_with_one_request_id(fake: Fake) -> None:
    fake.jobs.fail_creates = 2
    async with AsyncClient(fake.config()) as client:
        job = await client.create_job(Job(type=Job.TYPE_IMAGE), "j1")
    assert job.name == "jobs/j1"
    ids = fake.jobs.create_request_ids
    assert len(ids) == 3 and ids[0] and len(set(ids)) == 1

    fake.jobs.fail_creates, fake.jobs.create_request_ids = 5, []

    def sync() -> None:
        with Client(fake.config()) as sync_client:
            sync_client.create_job(Job(type=Job.TYPE_IMAGE))

    with pytest.raises(UnavailableError):
        await asyncio.to_thread(sync)
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
            return [e.sequence for e in itertools.islice(events, 9)]

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


# ---------------------------------------------------------------------------------------------
# The real server

MS = measurement_sets_pb2.MeasurementSet
Image = images_pb2.Image
WRITER, READER = "writer-token", "reader-token"
CALIBRATOR = "sources/J083454.9+553421"


def ms_message(index: int = 0, *, dec: float = 54.57) -> Any:
    mid = 60976.5 + index * 0.0036
    return MS(
        path=f"/stage/dsa110-contimg/ms/science/2025-10-28/2025-10-28T13:{index:02d}:07.ms",
        group_id=f"2025-10-28T13:{index:02d}:07",
        start_mjd=mid - 0.0018,
        mid_mjd=mid,
        end_mjd=mid + 0.0018,
        pointing_ra_deg=128.0 + index * 1.3,
        pointing_dec_deg=dec,
        stage=MS.STAGE_CONVERTED,
    )


def image_message(ms: Any, suffix: str = "image") -> Any:
    return Image(
        path=ms.path.replace("/ms/science/", "/images/").replace(".ms", f"-{suffix}.fits"),
        measurement_set=ms.name,
        type=Image.TYPE_CONTINUUM,
        center_ra_deg=ms.pointing_ra_deg,
        center_dec_deg=ms.pointing_dec_deg,
        size_x_px=4096,
        size_y_px=4096,
        cell_size_arcsec=2.5,
        noise_jy=0.0006,
        frequency_ghz=1.405,
    )


def measurement(source: str, ra: float, dec: float, flux: float) -> Any:
    return sources_pb2.PhotometryMeasurement(
        source=source, ra_deg=ra, dec_deg=dec, peak_flux_jy=flux, peak_flux_err_jy=0.01, snr=flux / 0.001
    )


@pytest.fixture
async def live(server_factory: Any) -> Any:
    """A real server with a write and a read token, refusing anonymous writes."""
    return await server_factory(write_tokens=WRITER, read_tokens=READER, allow_anonymous_writes=False)


def client_config(target: str, **changes: Any) -> ClientConfig:
    values: dict[str, Any] = {"target": target, "token": WRITER, "watch_backoff_initial_s": 0.05}
    return ClientConfig(**(values | changes))


class AsyncDriver:
    """Calls a client method by name; `all` drains a pager. Lets one scenario drive both clients."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.client, method)(*args, **kwargs)

    async def all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return [item async for item in getattr(self.client, method)(*args, **kwargs)]

    async def events(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return await self.all(method, *args, **kwargs)


class SyncDriver(AsyncDriver):
    def __init__(self, client: Client) -> None:  # type: ignore[override]
        self.sync = client

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(lambda: getattr(self.sync, method)(*args, **kwargs))

    async def all(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        return await asyncio.to_thread(lambda: list(getattr(self.sync, method)(*args, **kwargs)))


@contextlib.asynccontextmanager
async def driver(flavour: str, target: str, **changes: Any) -> AsyncIterator[AsyncDriver]:
    if flavour == "async":
        async with AsyncClient(client_config(target, **changes)) as client:
            yield AsyncDriver(client)
    else:
        with Client(client_config(target, **changes)) as sync_client:
            yield SyncDriver(sync_client)


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_every_method_against_the_server(live: Any, flavour: str) -> None:
    async with driver(flavour, live.target) as call:
        # MSService
        ms = await call("create_measurement_set", ms_message(0))
        assert ms.name == ms_name(ms.path) and ms.stage == MS.STAGE_CONVERTED
        other = await call(
            "create_measurement_set",
            request=measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=ms_message(1)),
        )
        assert (await call("get_measurement_set", ms.path)).name == ms.name  # a bare path works too
        batch = await call("batch_get_measurement_sets", [other.name, ms.name])
        assert [m.name for m in batch.measurement_sets] == [other.name, ms.name]
        updated = await call("update_measurement_set", MS(name=ms.name, field_name="drift_54"), ["field_name"])
        assert updated.field_name == "drift_54" and updated.mid_mjd == ms.mid_mjd
        upserted = await call("update_measurement_set", ms_message(2), allow_missing=True)
        assert upserted.name == ms_name(ms_message(2).path)
        advanced = await call("advance_measurement_set_stage", ms.name, MS.STAGE_IMAGED, MS.STATUS_COMPLETED)
        assert advanced.stage == MS.STAGE_IMAGED
        assert [m.name for m in await call.all("list_measurement_sets", "stage = IMAGED")] == [ms.name]
        assert len(await call.all("list_measurement_sets", order_by="mid_mjd", page_size=1)) == 3

        # ImageService
        image = await call("create_image", image_message(ms))
        assert image.name.startswith("images/") and image.measurement_set == ms.name
        residual = await call("create_image", image_message(ms, "residual"), request_id=str(uuid.uuid4()))
        assert (await call("get_image", image.name)).path == image.path
        assert [i.name for i in (await call("batch_get_images", [residual.name, image.name])).images] == [
            residual.name,
            image.name,
        ]
        graded = await call(
            "update_image",
            Image(name=image.name, qa=images_pb2.QualityAssessment(grade=images_pb2.QualityAssessment.GRADE_GOOD)),
            ["qa.grade"],
        )
        assert graded.qa.grade == images_pb2.QualityAssessment.GRADE_GOOD and graded.noise_jy == image.noise_jy
        listed = await call.all("list_images", filter=f'measurement_set = "{ms.name}"', order_by="create_time")
        assert [i.name for i in listed] == [image.name, residual.name]
        matches = await call.all("search_images", ms.pointing_ra_deg + 0.2, ms.pointing_dec_deg)
        assert {m.image.name for m in matches} == {image.name, residual.name}
        assert all(0 < m.separation_deg < 1 for m in matches)

        # SourceService
        recorded = await call(
            "record_photometry",
            image.name,
            [
                measurement(CALIBRATOR, 128.7288, 55.5725, 4.85),
                measurement("sources/J083000.0+543000", 127.5, 54.5, 0.12),
            ],
        )
        assert recorded.recorded_count == 2 and recorded.created_source_count == 2
        residual_photometry = await call(
            "record_photometry",
            residual.name,
            columns=sources_pb2.PhotometryColumns(
                source=["sources/J083100.0+543600"],
                ra_deg=[127.75],
                dec_deg=[54.6],
                peak_flux_jy=[0.2],
                peak_flux_err_jy=[0.01],
            ),
        )
        assert residual_photometry.recorded_count == 1 and residual_photometry.created_source_count == 1
        source = await call("get_source", CALIBRATOR)
        assert source.detection_count == 1 and source.variability.epoch_count == 1
        assert len((await call("batch_get_sources", [CALIBRATOR, CALIBRATOR])).sources) == 2
        assert [s.name for s in await call.all("list_sources", "dec_deg > 55")] == [CALIBRATOR]
        cone = await call.all("search_sources", 128.7, 55.57, 0.5)
        assert [m.source.name for m in cone] == [CALIBRATOR]
        curve = await call("get_lightcurve", CALIBRATOR, max_points_per_message=1)
        assert curve.source.name == CALIBRATOR and [p.peak_flux_jy for p in curve.points] == [4.85]
        assert curve.points[0].observation_mjd == pytest.approx(ms.mid_mjd)

        # JobService
        job = await call("create_job", Job(type=Job.TYPE_IMAGE, measurement_set=ms.name), "image-one")
        assert job.name == "jobs/image-one" and job.state == Job.STATE_PENDING
        assert (await call("start_job", job.name)).state == Job.STATE_RUNNING
        progressed = await call("report_job_progress", job.name, Job.STAGE_IMAGING, 40.0, "cleaning")
        assert progressed.stage == Job.STAGE_IMAGING and progressed.progress_percent == 40.0
        assert (await call("append_job_log", job.name, ["one", "two", "three"])).log_line_count == 3
        entries = await call.all("list_job_log_entries", job.name, page_size=2)
        assert [(e.line_number, e.text) for e in entries] == [(1, "one"), (2, "two"), (3, "three")]
        done = await call("succeed_job", job.name, [image.name], "ok")
        assert done.state == Job.STATE_SUCCEEDED and list(done.artifacts) == [image.name]
        assert [t.to_state for t in (await call("get_job", job.name)).transitions] == [
            Job.STATE_PENDING,
            Job.STATE_RUNNING,
            Job.STATE_RUNNING,
            Job.STATE_SUCCEEDED,
        ]
        # A watch of a finished job: its snapshot, then the stream ends.
        snapshot = await call.events("watch_job", job.name)
        assert [(e.type, e.job.state) for e in snapshot] == [(JobEvent.TYPE_SNAPSHOT, Job.STATE_SUCCEEDED)]

        flaky = await call("create_job", Job(type=Job.TYPE_CALIBRATE, ms_path=other.path, max_attempts=2))
        assert (await call("fail_job", flaky.name, "disk full")).state == Job.STATE_FAILED
        again = await call("retry_job", flaky.name)
        assert again.state == Job.STATE_PENDING
        assert (await call("cancel_job", flaky.name, "not needed")).state == Job.STATE_CANCELLED
        assert {j.name for j in await call.all("list_jobs")} == {job.name, flaky.name}
        assert [j.name for j in await call.all("list_jobs", "state = CANCELLED")] == [flaky.name]

        # Deletes: photometry and images hold their parents back unless forced.
        with pytest.raises(FailedPreconditionError) as held:
            await call("delete_image", image.name)
        assert held.value.reason == "IMAGE_HAS_PHOTOMETRY"
        await call("delete_image", image.name, force=True)
        with pytest.raises(NotFoundError):
            await call("get_image", image.name)
        with pytest.raises(FailedPreconditionError):
            await call("delete_measurement_set", ms.name)
        await call("delete_measurement_set", ms.name, True)
        assert {m.name for m in await call.all("list_measurement_sets")} == {other.name, upserted.name}


async def test_pager_walks_many_pages(live: Any) -> None:
    async with AsyncClient(client_config(live.target)) as client:
        created = {(await client.create_job(Job(type=Job.TYPE_IMAGE), f"job-{i:03d}")).name for i in range(75)}

        pager = await client.list_jobs(page_size=7)
        assert pager.total_size == 75
        pages = [page async for page in pager.pages]
        assert len(pages) == 11 and all(p.total_size == 75 for p in pages)
        assert [len(p.jobs) for p in pages] == [7] * 10 + [5] and not pages[-1].next_page_token
        names = [job.name async for job in client.list_jobs(order_by="create_time", page_size=7)]
        assert len(names) == 75 and set(names) == created

        filtered = client.list_jobs(filter="state = PENDING", order_by="create_time desc", page_size=10)
        assert [job.name async for job in filtered] == list(reversed(names))

    def sync() -> tuple[int, int, list[str]]:
        with Client(client_config(live.target)) as sync_client:
            pager = sync_client.list_jobs(order_by="create_time", page_size=8)
            return pager.total_size, len(list(pager.pages)), [job.name for job in pager]

    total, page_count, sync_names = await asyncio.to_thread(sync)
    assert (total, page_count, sync_names) == (75, 10, names)


async def test_sync_client_outside_and_inside_a_running_loop(live: Any) -> None:
    async with AsyncClient(client_config(live.target)) as client:
        job = await client.create_job(Job(type=Job.TYPE_PHOTOMETRY), "loop-test")

    def outside() -> str:
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        with Client(client_config(live.target)) as sync_client:
            return sync_client.get_job(job.name).name

    async def inside() -> list[str]:
        # As in a Jupyter cell: a loop is running in this thread while the blocking client is used.
        asyncio.get_running_loop()
        with Client(client_config(live.target)) as sync_client:
            started = sync_client.start_job(job.name)
            return [started.name, *(j.name for j in sync_client.list_jobs())]

    assert await asyncio.to_thread(outside) == job.name
    assert await asyncio.to_thread(asyncio.run, inside()) == [job.name, job.name]


async def test_watchers_survive_a_server_restart_without_losing_events(server_factory: Any, tmp_path: Any) -> None:
    first = await server_factory(write_tokens=WRITER)
    target, port = first.target, first.port
    # A first reconnect delay of 0.5-1 s: the writes after the restart land before any watcher is
    # back, so they can only reach the watchers through the after_sequence replay.
    watching = client_config(target, watch_backoff_initial_s=1.0)
    async with AsyncClient(watching) as client:
        job = await client.create_job(Job(type=Job.TYPE_PIPELINE), "restart-me")
        one_job: list[Any] = []
        all_jobs: list[Any] = []
        got_running = asyncio.Event()

        async def follow_job() -> None:
            async for event in client.watch_job(job.name):
                one_job.append(event)
                if event.job.state == Job.STATE_RUNNING:
                    got_running.set()

        async def follow_all() -> None:
            async for event in client.watch_jobs():
                all_jobs.append(event)
                if event.job.name == job.name and is_final(event.job):
                    return

        def follow_job_sync() -> list[Any]:
            with Client(watching) as sync_client:
                return list(sync_client.watch_job(job.name))

        watchers = [asyncio.create_task(follow_job()), asyncio.create_task(follow_all())]
        sync_watcher = asyncio.create_task(asyncio.to_thread(follow_job_sync))
        await asyncio.sleep(0.3)  # let every watcher subscribe
        await client.start_job(job.name)
        await asyncio.wait_for(got_running.wait(), 5)

        await first.stop(0.2)
        second = await server_factory(port=port, write_tokens=WRITER)
        # These happen while the watchers are still backing off: only a replay can deliver them.
        async with AsyncClient(client_config(second.target)) as writer:
            for stage, percent in [(Job.STAGE_CONVERTING, 10.0), (Job.STAGE_IMAGING, 60.0)]:
                await writer.report_job_progress(job.name, stage, percent)
            other = await writer.create_job(Job(type=Job.TYPE_IMAGE), "bystander")
            await writer.succeed_job(job.name, ["images/1"])
            history = [t.sequence for t in (await writer.get_job(job.name)).transitions]

        await asyncio.wait_for(asyncio.gather(*watchers), 20)
        sync_events = await asyncio.wait_for(sync_watcher, 20)

    for events in (one_job, sync_events):
        assert events[0].type == JobEvent.TYPE_SNAPSHOT and events[0].sequence == history[0]
        assert [e.sequence for e in events[1:]] == history[1:]
        assert [e.job.state for e in events][-1] == Job.STATE_SUCCEEDED
    # WatchJobs starts live: everything after the subscription, across the restart, exactly once.
    seen = [e.sequence for e in all_jobs]
    assert seen == sorted(set(seen)) and set(history[1:]) <= set(seen)
    assert any(e.job.name == other.name for e in all_jobs)


class DroppingProxy:
    """A TCP proxy that, once armed, swallows the server's next bytes and then cuts the connection.

    That is a write the server committed whose answer never arrived: the client sees UNAVAILABLE
    and gRPC retries it, on a new connection, with the same serialized request.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    if from_server and self.armed:
                        self.armed = False
                        await asyncio.sleep(0.5)  # the server finishes and commits meanwhile
                        client_writer.transport.abort()
                        server_writer.transport.abort()
                        return
                    writer.write(data)
                    await writer.drain()

        await asyncio.gather(
            pump(client_reader, server_writer, False), pump(server_reader, client_writer, True), return_exceptions=True
        )
        for writer in (client_writer, server_writer):
            writer.transport.abort()


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_retried_writes_are_not_duplicated(live: Any, flavour: str) -> None:
    proxy = DroppingProxy(live.port)
    target = await proxy.start()
    try:
        async with driver(flavour, target) as call:
            with pytest.raises(NotFoundError):
                await call("get_job", "jobs/warm-up")  # connection and HTTP/2 settings done
            proxy.armed = True
            job = await call("create_job", Job(type=Job.TYPE_IMAGE))  # server-generated id
            assert proxy.connections == 2, "the create was not retried"
            assert [j.name for j in await call.all("list_jobs")] == [job.name]

            proxy.armed = True
            appended = await call("append_job_log", job.name, ["once"])
            assert proxy.connections == 3 and appended.log_line_count == 1
            assert [e.text for e in await call.all("list_job_log_entries", job.name)] == ["once"]
    finally:
        await proxy.stop()


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_server_errors_raise_typed_exceptions(live: Any, flavour: str) -> None:
    async with driver(flavour, live.target) as call:
        with pytest.raises(NotFoundError) as missing:
            await call("get_image", "images/999")
        assert missing.value.reason == "IMAGE_NOT_FOUND" and missing.value.metadata["resource"] == "images/999"
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and missing.value.domain == "contimg.dsa110.org"

        with pytest.raises(InvalidArgumentError) as bad_filter:
            await call.all("list_images", filter="noise_jy <")
        assert bad_filter.value.reason == "INVALID_FILTER"
        assert [field for field, _ in bad_filter.value.field_violations] == ["filter"]

        with pytest.raises(InvalidArgumentError) as bad_value:
            await call("create_measurement_set", MS(path="/ms/x.ms", pointing_dec_deg=91))
        assert "measurement_set.pointing_dec_deg" in [f for f, _ in bad_value.value.field_violations]

        await call("create_measurement_set", ms_message(5))
        with pytest.raises(AlreadyExistsError) as twice:
            await call("create_measurement_set", ms_message(5))
        assert twice.value.reason == "MEASUREMENT_SET_ALREADY_EXISTS"

        job = await call("create_job", Job(type=Job.TYPE_IMAGE))
        with pytest.raises(FailedPreconditionError) as illegal:
            await call("succeed_job", job.name)
        assert illegal.value.reason == "INVALID_JOB_TRANSITION"
        assert illegal.value.metadata.get("from_state") and illegal.value.metadata.get("to_state")

        request_id = str(uuid.uuid4())
        await call("create_job", Job(type=Job.TYPE_IMAGE), request_id=request_id)
        with pytest.raises(AbortedError) as reused:
            await call("create_job", Job(type=Job.TYPE_CALIBRATE), request_id=request_id)
        assert reused.value.reason == "REQUEST_ID_MISMATCH"

    async with driver(flavour, live.target, token=None) as anonymous:
        assert await anonymous.all("list_jobs")  # reads are open
        with pytest.raises(UnauthenticatedError):
            await anonymous("create_job", Job(type=Job.TYPE_IMAGE))
    async with driver(flavour, live.target, token=READER) as reader:
        with pytest.raises(PermissionDeniedError) as denied:
            await reader("create_job", Job(type=Job.TYPE_IMAGE))
        assert denied.value.reason == "PERMISSION_DENIED"
    async with driver(flavour, live.target, token="forged") as forged:
        with pytest.raises(UnauthenticatedError):
            await forged.all("list_jobs")


def _write_pki(directory: Any) -> dict[str, Any]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "contimg test CA")])

    def issue(subject: x509.Name, key: Any, issuer_key: Any, *, ca: bool, ip: bool = False) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ip:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    files: dict[str, Any] = {}

    def save(name: str, cert: x509.Certificate, key: Any) -> None:
        files[name] = directory / f"{name}.pem"
        files[name].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}-key"] = directory / f"{name}-key.pem"
        files[f"{name}-key"].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    save("ca", issue(ca_name, ca_key, ca_key, ca=True), ca_key)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        save(name, issue(subject, key, ca_key, ca=False, ip=name == "server"), key)
    return files


async def test_mutual_tls(server_factory: Any, tmp_path: Any) -> None:
    pki = _write_pki(tmp_path)
    server = await server_factory(
        tls_cert=str(pki["server"]), tls_key=str(pki["server-key"]), tls_client_ca=str(pki["ca"])
    )
    config = ClientConfig(
        target=server.target, tls_ca=pki["ca"], tls_cert=pki["client"], tls_key=pki["client-key"], deadline_s=5
    )
    async with AsyncClient(config) as client:
        assert (await client.list_jobs()).total_size == 0

    def sync() -> int:
        with Client(config) as sync_client:
            return sync_client.list_jobs().total_size

    assert await asyncio.to_thread(sync) == 0
    # Without a client certificate the handshake fails: UNAVAILABLE after the retries.
    async with AsyncClient(config.replace(tls_cert=None, tls_key=None)) as anonymous:
        with pytest.raises(UnavailableError):
            await anonymous.list_jobs()


def test_retry_policies_that_grpc_would_refuse_are_refused_here() -> None:
    """A policy gRPC cannot parse would fail every call of the channel; refuse it when made, and
    take max_attempts=1 as no policy (gRPC's own minimum is 2)."""
    for bad in (
        {"max_attempts": 0},
        {"initial_backoff_s": 0.0},
        {"initial_backoff_s": 1e-5},  # gRPC counts whole milliseconds
        {"max_backoff_s": float("nan")},
        {"backoff_multiplier": -1.0},
        {"initial_backoff_s": 3.0, "max_backoff_s": 2.0},
    ):
        with pytest.raises(ValueError):
            RetryPolicy(**bad)
    single = ClientConfig(
        read_retry=RetryPolicy(max_attempts=1), write_retry=RetryPolicy(initial_backoff_s=0.001, max_backoff_s=1e16)
    )
    [writes] = json.loads(str(dict(single.channel_options())["grpc.service_config"]))["methodConfig"]
    assert writes["retryPolicy"]["initialBackoff"] == "0.001s"
    assert writes["retryPolicy"]["maxBackoff"] == "10000000000000000s"  # not 1e+16s
    assert {e["method"] for e in writes["name"]} >= {"CreateImage"}


def test_deadlines_that_every_call_would_miss_are_refused() -> None:
    for text in ("nan", "NaN", "1e309", "-inf", "-1"):
        with pytest.raises(ValueError):
            parse_deadline(text)
    assert parse_deadline("Infinity") is None and parse_deadline("none") is None and parse_deadline("2.5") == 2.5
    with pytest.raises(ValueError):
        ClientConfig(deadline_s=float("nan"))


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_odd_retry_policies_still_make_a_working_channel(live: Any, flavour: str) -> None:
    changes = {"read_retry": RetryPolicy(max_attempts=1), "write_retry": RetryPolicy(initial_backoff_s=0.001)}
    async with driver(flavour, live.target, **changes) as call:
        job = await call("create_job", Job(type=Job.TYPE_IMAGE))
        assert (await call("get_job", job.name)).name == job.name


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_one_string_is_not_taken_as_a_list_of_characters(live: Any, flavour: str) -> None:
    async with driver(flavour, live.target) as call:
        job = await call("create_job", Job(type=Job.TYPE_IMAGE))
        for method, args in (
            ("append_job_log", (job.name, "hello")),
            ("succeed_job", (job.name, "images/1")),
            ("batch_get_images", ("images/1",)),
            ("batch_get_sources", ("sources/X",)),
            ("batch_get_measurement_sets", ("/data/x.ms",)),
            ("update_image", (images_pb2.Image(name="images/1"), "noise_jy")),
        ):
            with pytest.raises(TypeError, match="not one string"):
                await call(method, *args)
        assert (await call("get_job", job.name)).log_line_count == 0


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_resuming_a_watch_after_the_final_event_ends_at_once(live: Any, flavour: str) -> None:
    """The server ends such a stream with no event; the watcher must not take that for a server
    going away and reconnect until it gives up."""
    async with driver(flavour, live.target, watch_give_up_s=5.0) as call:
        job = await call("create_job", Job(type=Job.TYPE_IMAGE))
        await call("start_job", job.name)
        await call("succeed_job", job.name, ["images/1"])
        events = await call.events("watch_job", job.name)
        assert events[-1].job.state == Job.STATE_SUCCEEDED
        assert await call.events("watch_job", job.name, after_sequence=events[-1].sequence) == []
        # Resumed before the final event: only what came after.
        created = (await call("get_job", job.name)).transitions[0].sequence
        rest = await call.events("watch_job", job.name, after_sequence=created)
        assert [e.job.state for e in rest] == [Job.STATE_RUNNING, Job.STATE_SUCCEEDED]


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_closing_a_clone_leaves_the_shared_channel_open(live: Any, flavour: str) -> None:
    if flavour == "async":
        async with AsyncClient(client_config(live.target)) as client:
            async with client.with_options(deadline_s=5) as clone:
                assert (await clone.list_jobs()).total_size == 0
            assert (await client.list_jobs()).total_size == 0
        return

    def sync() -> int:
        with Client(client_config(live.target)) as sync_client:
            with sync_client.with_options(token=READER) as reader:
                reader.list_jobs()
            return sync_client.list_jobs().total_size

    assert await asyncio.to_thread(sync) == 0


@pytest.mark.parametrize("flavour", ["async", "sync"])
async def test_watch_gives_up_on_a_server_that_accepts_but_never_answers(flavour: str) -> None:
    """Each attempt takes longer than a healthy stream's second to fail (the kernel accepts the TCP
    connection, nothing ever answers HTTP/2): that must not pass for a server that answered."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)  # never accept()ed: connections wait in the backlog, unanswered
        config = ClientConfig(
            target=f"127.0.0.1:{listener.getsockname()[1]}",
            watch_give_up_s=2.0,
            watch_backoff_initial_s=0.05,
            watch_backoff_max_s=0.2,
        )
        # gRPC gives a connection attempt at least this long (20 s by default).
        options = [*config.channel_options(), ("grpc.min_reconnect_backoff_ms", 1500)]
        started = asyncio.get_running_loop().time()
        if flavour == "async":
            async with AsyncClient(config, channel=grpc.aio.insecure_channel(config.target, options=options)) as client:
                with pytest.raises(UnavailableError, match="stopped watching"):
                    await asyncio.wait_for(client.watch_job("jobs/hung").__anext__(), 30)
        else:

            def sync() -> None:
                with Client(config, channel=grpc.insecure_channel(config.target, options=options)) as client:
                    next(iter(client.watch_job("jobs/hung")))

            with pytest.raises(UnavailableError, match="stopped watching"):
                await asyncio.wait_for(asyncio.to_thread(sync), 30)
        assert asyncio.get_running_loop().time() - started < 25


def test_the_give_up_clock_runs_from_the_first_unanswered_attempt() -> None:
    """One attempt can take gRPC's whole connect timeout to fail: that time counts."""
    config = ClientConfig(watch_give_up_s=2.0)
    cause = UnavailableError("unreachable")
    backoff = Backoff(config)
    with pytest.raises(UnavailableError, match="stopped watching"):
        backoff.next_delay(cause, attempt_started=time.monotonic() - 5.0)
    backoff = Backoff(config)
    assert backoff.next_delay(cause, attempt_started=time.monotonic() - 1.0) > 0
    backoff.answered()  # the server answered the next attempt: the clock starts again
    assert backoff.next_delay(cause, attempt_started=time.monotonic()) > 0
