"""A pipeline process appending job log lines, one call after another, in its own process.

Run by tests/test_bounded_resources.py as `python pipeline_writer.py TARGET TOKEN`: it creates a
job, prints `ready`, then appends a line per call until a line arrives on stdin (or stdin closes),
and prints a JSON list of [monotonic start in seconds, latency in ms], one per call. Any failed
call ends it with a non-zero exit and the status on stderr: the tests assert that every write of
the pipeline succeeds. Its own process (and event loop) so that the hostile clients' work in the
test process is not counted in the writer's latencies, as it would not be for a real pipeline.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc


async def append_until_stopped(target: str, token: str) -> list[tuple[float, float]]:
    metadata = (("authorization", f"Bearer {token}"),)
    calls: list[tuple[float, float]] = []
    loop = asyncio.get_running_loop()
    stop = loop.run_in_executor(None, sys.stdin.readline)
    async with grpc.aio.insecure_channel(target) as channel:
        jobs = jobs_pb2_grpc.JobServiceStub(channel)
        job = await jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1)), metadata=metadata, timeout=10)
        request = jobs_pb2.AppendJobLogRequest(name=job.name, lines=["step done"])
        print("ready", flush=True)
        while not stop.done():
            began = time.monotonic()
            await jobs.AppendJobLog(request, metadata=metadata, timeout=10)
            calls.append((began, (time.monotonic() - began) * 1000))
    return calls


def main() -> int:
    target, token = sys.argv[1], sys.argv[2]
    try:
        calls = asyncio.run(append_until_stopped(target, token))
    except grpc.aio.AioRpcError as exc:
        print(f"a write failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(json.dumps(calls), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
