"""The access log as shipped (accesslog.py): one line per RPC from a real server process, in text
or JSON, every call counted once with its code, none lost at shutdown, and silent below INFO."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import grpc
import pytest
from dsa110.contimg.server.accesslog import MAX_WAITING, AccessLog
from dsa110.contimg.v1 import jobs_pb2

from conftest import make_stubs
from helpers_stress import ServerProcess

ENGINES = ("sqlite",)  # the log is the server's, not the storage's


async def _calls(server: ServerProcess) -> dict[str, list[str]]:
    """A CreateJob, three GetJob (one OK, two NOT_FOUND), a WatchJob stream that ends with the job
    (snapshot, started, succeeded), a ClaimJob its caller cancels: the codes expected per method."""
    async with grpc.aio.insecure_channel(server.target) as channel:
        jobs = make_stubs(channel).jobs
        job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
        await jobs.GetJob(jobs_pb2.GetJobRequest(name=job.name))
        for missing in ("jobs/nope-1", "jobs/nope-2"):
            with pytest.raises(grpc.aio.AioRpcError):
                await jobs.GetJob(jobs_pb2.GetJobRequest(name=missing))
        call = jobs.WatchJob(jobs_pb2.WatchJobRequest(name=job.name))
        await call.read()  # the snapshot: watching
        await jobs.StartJob(jobs_pb2.StartJobRequest(name=job.name))
        await jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job.name))
        rest = []
        while (event := await call.read()) is not grpc.aio.EOF:
            rest.append(event)
        assert len(rest) == 2  # started, succeeded: the stream ends after the final state
        # A unary call its caller cancels while it waits (no job of that type to claim, for 30 s).
        waiting = jobs_pb2.ClaimJobRequest(types=[jobs_pb2.Job.TYPE_CALIBRATE], worker="w", wait={"seconds": 30})
        claim = jobs.ClaimJob(waiting)
        await jobs.GetJob(jobs_pb2.GetJobRequest(name=job.name))  # a round trip later: the claim is waiting
        claim.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claim
    return {
        "ClaimJob": ["CANCELLED"],
        "CreateJob": ["OK"],
        "GetJob": ["OK", "NOT_FOUND", "NOT_FOUND", "OK"],
        "WatchJob": ["OK"],
        "StartJob": ["OK"],
        "SucceedJob": ["OK"],
    }


async def test_json_lines_parse_and_count_every_call(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("write pipeline-imaging s3cret-token\nwrite unnamed-one\n")
    server = ServerProcess(tmp_path, args=["--log-format", "json", "--tokens-file", str(tokens)])
    await server.start()
    expected = await _calls(server)
    async with grpc.aio.insecure_channel(server.target) as channel:
        jobs = make_stubs(channel).jobs
        for token in ("s3cret-token", "unnamed-one", "forged"):
            metadata = (("authorization", f"Bearer {token}"), ("x-request-id", f"req {token[:3]}"))
            try:
                await jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=metadata)
            except grpc.aio.AioRpcError as err:
                assert token == "forged" and err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert server.terminate() == 0  # the lines still waiting are written at shutdown
    lines = [ln for ln in server.log_path.read_text().splitlines() if not ln.startswith("---- start")]
    records = [json.loads(line) for line in lines]  # every line the server wrote is JSON
    rpcs = [r for r in records if r["logger"] == "contimg.rpc"]
    by_method: dict[str, list[str]] = {}
    for r in rpcs:
        assert set(r) >= {"time", "level", "method", "code", "duration_ms", "peer"}, r
        assert r["peer"].startswith("ipv4:127.0.0.1:") and r["duration_ms"] >= 0
        by_method.setdefault(r["method"].rsplit("/", 1)[1], []).append(r["code"])
    assert {m: by_method.get(m) for m in expected} == expected
    callers = [r["caller"] for r in rpcs]
    assert callers[:-3] == ["anonymous"] * (len(rpcs) - 3)
    assert callers[-3:] == ["pipeline-imaging", "unnamed-token", "invalid-token"]  # in call order
    # A caller's x-request-id is its call's (one word); the others are numbered, each once.
    request_ids = [r["request_id"] for r in rpcs]
    assert request_ids[-3:] == ["req_s3c", "req_unn", "req_for"]
    assert len(set(request_ids[:-3])) == len(rpcs) - 3 and all(request_ids)
    assert "s3cret-token" not in "\n".join(lines)
    assert any(r["logger"] != "contimg.rpc" and "serving on" in r["message"] for r in records)
    [watch] = [r for r in rpcs if r["method"].endswith("/WatchJob")]
    assert watch["messages"] == 3


async def test_below_info_no_rpc_line_is_written(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, args=["--log-level", "WARNING"])
    await server.start()
    await _calls(server)
    assert server.terminate() == 0
    assert "rpc method=" not in server.log_path.read_text()


def test_lines_waiting_are_bounded_and_drops_are_reported() -> None:
    """With the flusher stalled, the lines held stop at MAX_WAITING; the next flush writes them and
    one line saying how many were dropped."""
    out = io.StringIO()
    access = AccessLog(stream=lambda: out)
    now = time.perf_counter()
    entry = (now, now - 0.0005, "/dsa110.contimg.v1.JobService/GetJob", None, "ipv4:127.0.0.1:1", -1, ())
    for _ in range(MAX_WAITING + 7):
        access.keep(entry)
    assert access.dropped == 7
    access.flush()
    lines = out.getvalue().splitlines()
    assert len(lines) == MAX_WAITING + 1 and "7 access log lines dropped" in lines[-1]
    access.flush()
    assert len(out.getvalue().splitlines()) == MAX_WAITING + 1  # nothing held, nothing written twice
