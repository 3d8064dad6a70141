"""SIGHUP reloads the tokens file without a restart (app.py: `reload_tokens`), in every worker of
`--workers` (workers.py forwards it); a file that cannot be parsed changes nothing.

Every wait polls a condition against a deadline; none is a timing assertion."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import grpc
from dsa110.contimg.v1 import jobs_pb2, jobs_pb2_grpc

from conftest import free_port
from helpers_stress import ServerProcess, exit_status

FLAG_TOKEN = "from-the-flags"
DEADLINE_S = 30.0
CONNECTIONS = 16  # each its own TCP connection: with --workers 2 the kernel spreads them


async def _writes(target: str, token: str) -> list[grpc.StatusCode]:
    """One CreateJob with `token` through each of CONNECTIONS connections: their codes."""
    codes = []
    for _ in range(CONNECTIONS):
        async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            try:
                await jobs_pb2_grpc.JobServiceStub(ch).CreateJob(
                    jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)),
                    metadata=(("authorization", f"Bearer {token}"),),
                    timeout=10,
                )
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
    return codes


async def _until_all(target: str, token: str, code: grpc.StatusCode) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        codes = await _writes(target, token)
        if all(c == code for c in codes):
            return
        assert time.monotonic() < deadline, f"{token}: {codes}"
        await asyncio.sleep(0.05)


async def test_sighup_reloads_the_tokens_file_in_every_worker(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("write first-token\n")
    args = ["--tokens-file", str(tokens), "--workers", "2", "--synchronous", "NORMAL"]
    server = ServerProcess(tmp_path, args=args, write_token=FLAG_TOKEN, port=free_port())
    await server.start()
    try:
        await _until_all(server.target, "first-token", grpc.StatusCode.OK)
        assert set(await _writes(server.target, "second-token")) == {grpc.StatusCode.UNAUTHENTICATED}

        tokens.write_text("# rotated\nwrite second-token\nread reader-token\n")
        os.kill(server.pid, signal.SIGHUP)
        await _until_all(server.target, "second-token", grpc.StatusCode.OK)
        await _until_all(server.target, "first-token", grpc.StatusCode.UNAUTHENTICATED)
        await _until_all(server.target, "reader-token", grpc.StatusCode.PERMISSION_DENIED)
        await _until_all(server.target, FLAG_TOKEN, grpc.StatusCode.OK)  # the flags' tokens stay

        tokens.write_text("write\n")  # a line with no token: refused, the tokens in use stay
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + DEADLINE_S
        while server.log_path.read_text().count("tokens not reloaded") < 2:  # one line per worker
            assert time.monotonic() < deadline, server.log_tail()
            await asyncio.sleep(0.05)
        assert set(await _writes(server.target, "second-token")) == {grpc.StatusCode.OK}
        assert server.proc is not None and server.proc.poll() is None, "SIGHUP stopped the server"
    finally:
        assert server.terminate() == 0, server.log_tail()


async def test_a_tokens_file_that_does_not_parse_stops_the_start(tmp_path: Path) -> None:
    """Exit 1 with the line at fault, before the database is opened: it once hung beside its open storage."""
    tokens = tmp_path / "tokens"
    tokens.write_text("write a-token\nbogus\n")
    server = ServerProcess(tmp_path, args=["--tokens-file", str(tokens)], port=free_port())
    assert await exit_status(server.command(server.port), server.log_path, wait_s=DEADLINE_S) == 1
    assert f"{tokens}:2: expected 'write TOKEN'" in server.log_path.read_text()
    assert not (tmp_path / "contimg.sqlite3").exists()
