"""The browser port (`--web-port`): the same services over gRPC-Web and the Connect protocol.

The calls here are made with connect-python's own client over real HTTP (the wire formats a
browser's client speaks), against a real server; tests/test_browser.py drives a real browser.
What must hold: replies equal the native ones, errors keep their code and rich details, tokens and
deadlines pass through, streams deliver events live and end on the server when the browser goes,
and CORS lets in the origins configured and no others (not even their writes).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import pytest
from connectrpc.client import ConnectClient, ResponseMetadata
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo
from connectrpc.protocol import ProtocolType
from dsa110.contimg.server.app import ContimgServer
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.domain.errors import StartupError
from dsa110.contimg.server.events.watch import HEARTBEAT_S
from dsa110.contimg.server.web.compression import BoundedGzip
from dsa110.contimg.v1 import images_pb2, jobs_pb2
from google.rpc import error_details_pb2

from conftest import free_port
from helpers import make_image, make_ms
from helpers_stress import ServerProcess, until

ORIGIN = "https://dash.example.org"
TOKEN = "web-writer-token"

# (protocol, JSON?) as browsers' clients speak them: gRPC-Web (binary), Connect binary, Connect JSON.
PROTOCOLS = {
    "grpc-web": (ProtocolType.GRPC_WEB, False),
    "connect-proto": (ProtocolType.CONNECT, False),
    "connect-json": (ProtocolType.CONNECT, True),
}


def method(service: str, name: str, request: Any, reply: Any) -> MethodInfo[Any, Any]:
    return MethodInfo(
        name=name,
        service_name=f"dsa110.contimg.v1.{service}",
        input=request,
        output=reply,
        idempotency_level=IdempotencyLevel.UNKNOWN,
    )


LIST_IMAGES = method("ImageService", "ListImages", images_pb2.ListImagesRequest, images_pb2.ListImagesResponse)
CREATE_JOB = method("JobService", "CreateJob", jobs_pb2.CreateJobRequest, jobs_pb2.Job)
LIST_JOBS = method("JobService", "ListJobs", jobs_pb2.ListJobsRequest, jobs_pb2.ListJobsResponse)
WATCH_JOB = method("JobService", "WatchJob", jobs_pb2.WatchJobRequest, jobs_pb2.JobEvent)


@pytest.fixture
async def web(server_factory: Any) -> Any:
    """A server with its browser port, writes needing TOKEN, one allowed browser origin."""
    return await server_factory(
        web_port=free_port(),
        web_cors_origin=ORIGIN,
        write_tokens=TOKEN,
        allow_anonymous_writes=False,
        max_watch_streams=50,
    )


def client(srv: Any, protocol: str) -> ConnectClient:
    kind, as_json = PROTOCOLS[protocol]
    return ConnectClient(f"http://127.0.0.1:{srv.config.web_port}", protocol=kind, proto_json=as_json)


async def native(srv: Any) -> Any:
    from conftest import make_stubs

    return make_stubs(grpc.aio.insecure_channel(srv.target))


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_replies_equal_native_ones(web: Any, protocol: str) -> None:
    stubs = await native(web)
    request = images_pb2.ListImagesRequest(page_size=3, order_by="mid_mjd desc")
    async with client(web, protocol) as c:
        empty = await c.execute_unary(request=request, method=LIST_IMAGES)
        assert list(empty.images) == []
        created = await c.execute_unary(
            request=jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)),
            method=CREATE_JOB,
            headers=auth(),
        )
        assert created.name.startswith("jobs/")
        assert created.state == jobs_pb2.Job.STATE_PENDING
        via_web = await c.execute_unary(request=jobs_pb2.ListJobsRequest(), method=LIST_JOBS)
    via_grpc = await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())
    assert via_web == via_grpc
    assert [j.name for j in via_web.jobs] == [created.name]
    await stubs.channel.close()


async def test_images_equal_native_ones_over_every_protocol(server_factory: Any) -> None:
    srv = await server_factory(web_port=free_port())
    stubs = await native(srv)
    ms = await make_ms(stubs)
    for _ in range(4):
        await make_image(stubs, ms.name)
    request = images_pb2.ListImagesRequest(page_size=3, order_by="mid_mjd desc")
    via_grpc = await stubs.images.ListImages(request)
    assert len(via_grpc.images) == 3 and via_grpc.next_page_token
    for protocol in PROTOCOLS:
        async with client(srv, protocol) as c:
            assert await c.execute_unary(request=request, method=LIST_IMAGES) == via_grpc, protocol
    await stubs.channel.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_errors_keep_their_code_and_details(web: Any, protocol: str) -> None:
    async with client(web, protocol) as c:
        with pytest.raises(ConnectError) as bad:
            await c.execute_unary(request=images_pb2.ListImagesRequest(filter="noise_jy <"), method=LIST_IMAGES)
        assert bad.value.code == Code.INVALID_ARGUMENT
        assert "filter" in bad.value.message
        fields = []
        for detail in bad.value.details:
            found = error_details_pb2.BadRequest()
            if detail.Unpack(found):
                fields += [v.field for v in found.field_violations]
        assert fields == ["filter"]

        with pytest.raises(ConnectError) as missing:
            await c.execute_unary(
                request=jobs_pb2.GetJobRequest(name="jobs/no-such-job"),
                method=method("JobService", "GetJob", jobs_pb2.GetJobRequest, jobs_pb2.Job),
            )
        assert missing.value.code == Code.NOT_FOUND


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_writes_need_the_token_through_the_browser_port_too(web: Any, protocol: str) -> None:
    request = jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE))
    async with client(web, protocol) as c:
        with pytest.raises(ConnectError) as anonymous:
            await c.execute_unary(request=request, method=CREATE_JOB)
        with pytest.raises(ConnectError) as wrong:
            await c.execute_unary(request=request, method=CREATE_JOB, headers=auth("not-a-token"))
        assert {anonymous.value.code, wrong.value.code} <= {Code.UNAUTHENTICATED, Code.PERMISSION_DENIED}
        jobs = await c.execute_unary(request=jobs_pb2.ListJobsRequest(), method=LIST_JOBS)
        assert list(jobs.jobs) == []  # nothing half-written
        job = await c.execute_unary(request=request, method=CREATE_JOB, headers=auth())
        assert job.name.startswith("jobs/")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_watch_job_streams_events_live(web: Any, protocol: str) -> None:
    stubs = await native(web)
    md = (("authorization", f"Bearer {TOKEN}"),)
    job = await stubs.jobs.CreateJob(
        jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)), metadata=md
    )
    states: list[int] = []

    async def drive() -> None:
        await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name), metadata=md)
        await stubs.jobs.ReportJobProgress(
            jobs_pb2.ReportJobProgressRequest(name=job.name, progress_percent=50.0, message="half"), metadata=md
        )
        await stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name, message="done"), metadata=md)

    driver: asyncio.Task[None] | None = None
    async with client(web, protocol) as c:
        with ResponseMetadata() as reply:
            stream = c.execute_server_stream(request=jobs_pb2.WatchJobRequest(name=job.name), method=WATCH_JOB)
            async for event in stream:
                if event.type == jobs_pb2.JobEvent.TYPE_HEARTBEAT:
                    continue
                states.append(event.job.state)
                if driver is None:  # the stream is open and has the job as it is: drive it from now on
                    assert reply.headers().get("contimg-watch") == "open"  # the server's metadata, passed on
                    driver = asyncio.create_task(drive())
                if event.job.state == jobs_pb2.Job.STATE_SUCCEEDED:
                    break
    assert driver is not None
    await driver
    assert states[0] == jobs_pb2.Job.STATE_PENDING
    assert states[-1] == jobs_pb2.Job.STATE_SUCCEEDED
    assert jobs_pb2.Job.STATE_RUNNING in states
    await stubs.channel.close()


async def test_a_browser_that_leaves_a_watch_ends_it_on_the_server(web: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Ended at once, not at the next heartbeat (30 s) when the write to the gone browser fails;
    quietly (it once logged an ERROR traceback from hypercorn each time)."""
    admission = web.server.admission
    for protocol in PROTOCOLS:
        async with client(web, protocol) as c:
            stream = c.execute_server_stream(request=jobs_pb2.WatchJobsRequest(), method=WATCH_JOBS)
            async for _event in stream:
                assert admission.watches.active == 1
                break
            await stream.aclose()  # type: ignore[attr-defined]
        await until(lambda: admission.watches.active == 0, f"{protocol}: the watch to end", wait_s=HEARTBEAT_S / 3)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


WATCH_JOBS = method("JobService", "WatchJobs", jobs_pb2.WatchJobsRequest, jobs_pb2.JobEvent)


async def test_watches_the_server_admits_leave_room_for_other_browser_calls(server_factory: Any) -> None:
    """The gateway's connections to the server must carry every stream the server would admit and
    more: else, with the watches at their limit, a browser's read waits for a stream slot (forever,
    with no deadline) and one more watch waits instead of being refused."""
    per_connection = 20
    srv = await server_factory(
        web_port=free_port(),
        max_streams_per_connection=per_connection,
        max_watch_streams=per_connection,
        max_watch_streams_per_caller=per_connection,
        max_concurrent_reads=10,
        max_concurrent_writes=10,
    )
    async with client(srv, "connect-proto") as c:
        streams = [
            c.execute_server_stream(request=jobs_pb2.WatchJobsRequest(), method=WATCH_JOBS)
            for _ in range(per_connection)
        ]
        for stream in streams:
            first = await asyncio.wait_for(anext(stream), 10)  # type: ignore[call-overload]
            assert first.type == jobs_pb2.JobEvent.TYPE_HEARTBEAT
        assert srv.server.admission.watches.active == per_connection
        listed = await c.execute_unary(request=images_pb2.ListImagesRequest(), method=LIST_IMAGES, timeout_ms=5000)
        assert listed.total_size >= 0
        with pytest.raises(ConnectError) as refused:
            async for _event in c.execute_server_stream(
                request=jobs_pb2.WatchJobsRequest(), method=WATCH_JOBS, timeout_ms=5000
            ):
                pass
        assert refused.value.code == Code.RESOURCE_EXHAUSTED, refused.value.message
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
    await until(lambda: srv.server.admission.watches.active == 0, "the watches to end")


async def test_connections_that_stall_are_closed(server_factory: Any) -> None:
    """Idle, or stopping partway through a request's headers or its body: each is closed after
    --web-idle-timeout-s (hypercorn's keep-alive timeout; the body's, RequestIntake: answered
    DEADLINE_EXCEEDED in the caller's protocol), rather than holding a descriptor and a task for as
    long as the client likes."""
    srv = await server_factory(web_port=free_port(), web_idle_timeout_s=1.0)
    port = srv.config.web_port
    head = b"POST /dsa110.contimg.v1.ImageService/ListImages HTTP/1.1\r\nHost: x\r\n"
    stalls = {
        "idle": b"",
        "headers": head,
        "body": head + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        "grpc-web body": head.replace(b"ImageService/ListImages", b"JobService/WatchJobs")
        + b"Content-Type: application/grpc-web+proto\r\nContent-Length: 1000\r\n\r\n\x00\x00",
    }
    opened = {name: await asyncio.open_connection("127.0.0.1", port) for name in stalls}
    for name, sent in stalls.items():
        opened[name][1].write(sent)

    async def answer(reader: asyncio.StreamReader) -> bytes:
        return await asyncio.wait_for(reader.read(), 15)  # to EOF: the server closed it

    answers = {name: await answer(reader) for name, (reader, _) in opened.items()}
    assert answers["idle"] == b"" and answers["headers"] == b"", answers
    assert answers["body"].startswith(b"HTTP/1.1 504") and b"deadline_exceeded" in answers["body"], answers["body"]
    grpc_web = answers["grpc-web body"]
    assert grpc_web.startswith(b"HTTP/1.1 200") and b"grpc-status:4" in grpc_web.replace(b" ", b""), grpc_web
    for _, writer in opened.values():
        writer.close()
    status, _ = await asyncio.to_thread(
        connect_post, port, "/dsa110.contimg.v1.ImageService/ListImages", "application/json", b"{}"
    )
    assert status == 200


async def test_a_header_that_is_not_utf8_is_invalid_argument(web: Any) -> None:
    """Not `unknown` and HTTP 500 (connect-python's answer), and no traceback in the log."""

    def post() -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", web.config.web_port, timeout=10)
        conn.putrequest("POST", "/dsa110.contimg.v1.JobService/CreateJob")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Authorization", b"Bearer \xff\xfe")
        conn.putheader("Content-Length", "2")
        conn.endheaders(b"{}")
        reply = conn.getresponse()
        return reply.status, reply.read()

    status, body = await asyncio.to_thread(post)
    assert status == 400 and b"invalid_argument" in body and b"not valid UTF-8" in body, (status, body)


async def test_a_refused_upload_over_http2_leaves_the_connections_other_streams(web: Any) -> None:
    """Over HTTP/2 (h2c here; browsers' h2 is over TLS), a write refused before its body is read must
    not take down the connection: hypercorn 0.18 failed the whole connection, watches included,
    when DATA came for a stream it had already answered. The rest of the body is read and dropped."""
    reader, writer = await asyncio.open_connection("127.0.0.1", web.config.web_port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    events: list[Any] = []

    async def pump() -> None:
        writer.write(conn.data_to_send())
        await asyncio.wait_for(writer.drain(), 10)
        data = await asyncio.wait_for(reader.read(65536), 10)
        assert data, "the server closed the connection"
        events.extend(conn.receive_data(data))

    async def exchange(until_seen: Callable[[], bool]) -> None:
        writer.write(conn.data_to_send())
        await asyncio.wait_for(writer.drain(), 10)
        while not until_seen():
            await pump()

    def headers(path: str, token: str = "") -> list[tuple[str, str]]:
        sent = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", path)]
        sent += [("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1")]
        return sent + ([("authorization", f"Bearer {token}")] if token else [])

    def data_on(stream: int) -> bool:
        return any(isinstance(e, h2.events.DataReceived) and e.stream_id == stream for e in events)

    def ended(stream: int) -> bool:
        return any(isinstance(e, h2.events.StreamEnded) and e.stream_id == stream for e in events)

    watch = conn.get_next_available_stream_id()
    conn.send_headers(watch, headers("/dsa110.contimg.v1.JobService/WatchJobs"))
    conn.send_data(watch, b"\x00\x00\x00\x00\x00", end_stream=True)
    await exchange(lambda: data_on(watch))  # the watch is open: its first message (a heartbeat)

    upload = conn.get_next_available_stream_id()  # an anonymous write, 200 KiB in parts
    conn.send_headers(upload, headers("/dsa110.contimg.v1.JobService/CreateJob"))
    body = b"\x00" + (200 << 10).to_bytes(4, "big") + bytes(200 << 10)
    for at in range(0, len(body), 16 << 10):
        while conn.local_flow_control_window(upload) < 16 << 10:
            await pump()
        conn.send_data(upload, body[at : at + (16 << 10)], end_stream=at + (16 << 10) >= len(body))
    await exchange(lambda: ended(upload))
    answer = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == upload)
    assert b"grpc-status:16" in answer.replace(b" ", b""), answer  # UNAUTHENTICATED

    conn.ping(b"12345678")  # the connection, and the watch on it, are still there
    await exchange(lambda: any(isinstance(e, h2.events.PingAckReceived) for e in events))
    assert not any(isinstance(e, h2.events.StreamReset) and e.stream_id == watch for e in events)
    assert not ended(watch)
    conn.close_connection()
    writer.write(conn.data_to_send())
    writer.close()


async def test_writes_refused_before_their_body_are_logged_and_counted(
    server_factory: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """The gRPC server never sees a browser's write refused before its body is read, so the browser
    port records it as the server records its own calls: a log line and the handled series."""
    srv = await server_factory(
        web_port=free_port(), write_tokens=TOKEN, allow_anonymous_writes=False, metrics_port=free_port()
    )
    path = "/dsa110.contimg.v1.JobService/CreateJob"
    status, error = await asyncio.to_thread(connect_post, srv.config.web_port, path, "application/json", b"{}")
    assert status == 401 and error["code"] == "unauthenticated"
    labels = {"grpc_type": "unary", "grpc_service": "dsa110.contimg.v1.JobService", "grpc_method": "CreateJob"}

    def handled() -> float | None:
        registry = srv.server.metrics.registry
        return registry.get_sample_value("grpc_server_handled_total", {**labels, "grpc_code": "UNAUTHENTICATED"})

    await until(lambda: handled() == 1.0, "the refusal to be counted")
    assert srv.server.metrics.registry.get_sample_value("grpc_server_started_total", labels) == 1.0
    # The line is written by the same flush that counted the call.
    lines = [line for line in capsys.readouterr().err.splitlines() if f"method={path} " in line]
    assert len(lines) == 1 and "code=UNAUTHENTICATED" in lines[0] and "peer=web:127.0.0.1" in lines[0], lines
    assert "caller=anonymous" in lines[0], lines
    # A path that names no method is connect-python's 404, not a refusal.
    missing = await asyncio.to_thread(http_call, srv.config.web_port, "POST", "/no.Such/Method", {}, b"{}")
    assert missing.status == 404


async def test_deadline_passes_through(web: Any) -> None:
    async with client(web, "connect-proto") as c:
        stream = c.execute_server_stream(request=jobs_pb2.WatchJobsRequest(), method=WATCH_JOBS, timeout_ms=300)
        with pytest.raises(ConnectError) as late:
            async for _event in stream:
                pass
    assert late.value.code == Code.DEADLINE_EXCEEDED
    await until(lambda: web.server.admission.watches.active == 0, "the server's watch stream to end")


def http_call(port: int, verb: str, path: str, headers: dict[str, str], body: bytes = b"") -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(verb, path, body=body, headers=headers)
    reply = conn.getresponse()
    reply.read()
    conn.close()
    return reply


def connect_post(port: int, path: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """A Connect unary call by hand, as curl makes it: the HTTP status and the JSON error body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": content_type})
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, json.loads(data) if reply.status != 200 else {}


def violations(error: dict[str, Any]) -> list[str]:
    fields = []
    for detail in error.get("details", []):
        if detail["type"] == "google.rpc.BadRequest":
            found = error_details_pb2.BadRequest.FromString(base64.b64decode(detail["value"] + "=="))
            fields += [v.field for v in found.field_violations]
    return fields


@pytest.mark.parametrize(
    ("content_type", "body", "field"),
    [
        ("application/json", b'{"pageSize": 10', "request"),  # not JSON
        ("application/json", b'{"pageSize": "ten"}', "page_size"),  # a field of the wrong type
        ("application/json", b'{"page_size": 1.5}', "page_size"),
        ("application/json", b'{"pageSise": 10}', "request"),  # no such field
        ("application/json", b"\xff\xfe", "request"),  # not UTF-8
        ("application/proto", b"\x0a\xff\xff", "request"),  # truncated protobuf
    ],
)
async def test_a_body_that_does_not_decode_is_invalid_argument(
    web: Any, content_type: str, body: bytes, field: str
) -> None:
    """Not `unknown` and HTTP 500 (connect-python's answer): the native server's INVALID_ARGUMENT
    with a BadRequest naming the field, as Connect's HTTP 400."""
    path = "/dsa110.contimg.v1.ImageService/ListImages"
    status, error = await asyncio.to_thread(connect_post, web.config.web_port, path, content_type, body)
    assert status == 400, (status, error)
    assert error["code"] == "invalid_argument"
    assert error["message"].startswith("the request is not a valid ListImagesRequest: ")
    assert violations(error) == [field]
    good = b'{"pageSize": 10}' if content_type == "application/json" else b"\x08\x0a"
    assert (await asyncio.to_thread(connect_post, web.config.web_port, path, content_type, good))[0] == 200


async def test_cors_lets_in_configured_origins_only(web: Any) -> None:
    port = web.config.web_port
    path = "/dsa110.contimg.v1.JobService/CreateJob"
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = await asyncio.to_thread(http_call, port, "OPTIONS", path, {"Origin": ORIGIN, **ask})
    assert allowed.status == 204
    assert allowed.getheader("access-control-allow-origin") == ORIGIN
    assert "authorization" in (allowed.getheader("access-control-allow-headers") or "")
    assert "POST" in (allowed.getheader("access-control-allow-methods") or "")

    other = await asyncio.to_thread(http_call, port, "OPTIONS", path, {"Origin": "https://evil.example", **ask})
    assert other.status == 403
    assert other.getheader("access-control-allow-origin") is None

    # A write sent anyway from a page the operator did not allow (no preflight: a script outside a
    # browser, or a browser bug) must not run.
    body = b'{"job": {"type": "TYPE_IMAGE"}}'
    write = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    refused = await asyncio.to_thread(http_call, port, "POST", path, {"Origin": "https://evil.example", **write}, body)
    assert refused.status == 403
    done = await asyncio.to_thread(http_call, port, "POST", path, {"Origin": ORIGIN, **write}, body)
    assert done.status == 200
    assert done.getheader("access-control-allow-origin") == ORIGIN
    assert "grpc-status" in (done.getheader("access-control-expose-headers") or "")
    stubs = await native(web)
    assert len((await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest())).jobs) == 1  # the allowed one only
    await stubs.channel.close()


async def test_a_taken_browser_port_stops_the_start_with_nothing_open(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=tmp_path, web_port=port, allow_anonymous_writes=True)
        srv = ContimgServer(cfg)
        with pytest.raises(StartupError, match="browsers"):
            await srv.start()
    assert not (tmp_path / "contimg.sqlite3").exists()  # refused before the database was opened


async def test_workers_serve_the_browser_port_together(tmp_path: Path) -> None:
    web_port = free_port()
    proc = ServerProcess(
        tmp_path, port=free_port(), args=["--workers", "2", "--web-port", str(web_port)], name="workers"
    )
    await proc.start()
    try:
        stubs = await native(proc)
        ms = await make_ms(stubs)
        image = await make_image(stubs, ms.name)
        for _ in range(12):  # new connections each time: both workers' share of the socket answers
            async with ConnectClient(f"http://127.0.0.1:{web_port}", protocol=ProtocolType.GRPC_WEB) as c:
                reply = await c.execute_unary(request=images_pb2.ListImagesRequest(), method=LIST_IMAGES)
                assert [i.name for i in reply.images] == [image.name]
        await stubs.channel.close()
    finally:
        assert proc.terminate() == 0, proc.log_tail()
    assert "serving browsers" in proc.log_tail(200)


async def test_with_tls_the_browser_port_serves_https(server_factory: Any, tmp_path: Path) -> None:
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    openssl = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subject = ["-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    await asyncio.to_thread(subprocess.run, [*openssl, *subject, *files], check=True, capture_output=True)
    srv = await server_factory(web_port=free_port(), tls_cert=str(cert), tls_key=str(key))
    trusted = ssl.create_default_context(cafile=str(cert))

    def post(context: ssl.SSLContext | None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("127.0.0.1", srv.config.web_port, timeout=10, context=context)
        conn.request(
            "POST",
            "/dsa110.contimg.v1.ImageService/ListImages",
            body=b"{}",
            headers={"Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        return reply.status, reply.read()

    status, body = await asyncio.to_thread(post, trusted)
    assert (status, body) == (200, b"{}")  # no images yet: the empty reply, as JSON
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.to_thread(post, ssl.create_default_context())  # not our CA: refused
    plain = http.client.HTTPConnection("127.0.0.1", srv.config.web_port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
        await asyncio.to_thread(lambda: (plain.request("POST", "/", body=b"{}"), plain.getresponse().read()))


def test_cors_origins_repeat_and_are_checked() -> None:
    import argparse

    from dsa110.contimg.server import config as config_mod

    parser = argparse.ArgumentParser()
    config_mod.add_arguments(parser)

    def configured(*flags: str) -> ServerConfig:
        return config_mod.from_sources(parser.parse_args(list(flags)), environ={})

    twice = configured("--web-cors-origin", "https://a.example", "--web-cors-origin", "https://b.example:8443/")
    assert twice.web_cors_origin == "https://a.example,https://b.example:8443/"  # both, not the last alone
    tokens = configured("--write-tokens", "one", "--write-tokens", "two,three")
    assert tokens.write_tokens == "one,two,three"
    for bad in ("dash.example.org", "https://dash.example.org/app", "https://a.example,ftp:/x"):
        with pytest.raises(SystemExit, match="invalid --web-cors-origin"):
            configured("--web-cors-origin", bad)


def test_bounded_gzip_reads_what_gzip_reads_up_to_its_limit() -> None:
    unzip = BoundedGzip(1000)
    assert unzip.decompress(gzip.compress(b"a" * 1000)) == b"a" * 1000
    assert unzip.decompress(gzip.compress(b"ab") + gzip.compress(b"cd")) == b"abcd"  # two members
    assert unzip.decompress(unzip.compress(b"xyz")) == b"xyz"
    assert unzip.decompress(gzip.compress(b"a") * 16) == b"a" * 16
    assert BoundedGzip(1 << 20).decompress(gzip.compress(bytes(1 << 20))) == bytes(1 << 20)  # many slices
    refused = {
        Code.RESOURCE_EXHAUSTED: [gzip.compress(b"a" * 1001), gzip.compress(b"a" * 600) * 2],
        Code.INVALID_ARGUMENT: [gzip.compress(b"abc")[:-4], b"not gzip", gzip.compress(b"") * 17],
    }
    for code, bodies in refused.items():
        for body in bodies:
            with pytest.raises(ConnectError) as bad:
                unzip.decompress(body)
            assert bad.value.code == code, body
