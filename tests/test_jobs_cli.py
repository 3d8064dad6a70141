"""`contimg jobs` write side (create, claim, start, heartbeat, progress, succeed, fail, cancel,
retry, update, append-log, logs --follow), run as real subprocesses against a real server.

The server runs on the test's event loop, so the CLI is started with asyncio subprocesses.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from dsa110.contimg.client import AsyncClient, ClientConfig
from dsa110.contimg.v1 import jobs_pb2

from helpers_cli import Result
from helpers_cli import contimg as run_contimg

Job = jobs_pb2.Job
TOKEN = "cli-jobs-writer"


@pytest.fixture
async def target(server_factory: Any) -> str:
    server = await server_factory(write_tokens=TOKEN, allow_anonymous_writes=False)
    return str(server.target)


async def contimg(target: str, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> Result:
    return await run_contimg(*args, env={"CONTIMG_TARGET": target, "CONTIMG_TOKEN": TOKEN, **(env or {})}, stdin=stdin)


async def test_claimed_job_through_its_lease(target: str) -> None:
    created = await contimg(target, "jobs", "create", "image", "--id", "cli-w", "--priority", "5", "--json")
    assert created.code == 0, created.err
    assert created.json["name"] == "jobs/cli-w" and created.json["state"] == "STATE_PENDING"
    assert created.json["priority"] == 5

    claimed = await contimg(target, "jobs", "claim", "image", "--worker", "w1", "--lease", "30", "--json")
    assert claimed.code == 0, claimed.err
    token = claimed.json["lease_token"]
    assert claimed.json["job"]["name"] == "jobs/cli-w" and claimed.json["job"]["lease_holder"] == "w1" and token
    nothing = await contimg(target, "jobs", "claim", "image", "--wait", "0.5", "--json")
    assert nothing.code == 0 and nothing.out == "", nothing.err

    beat = await contimg(target, "jobs", "heartbeat", "cli-w", "--lease-token", token, "--json")
    assert beat.code == 0 and "lease_expire_time" in beat.json, beat.err
    lease_env = {"CONTIMG_LEASE_TOKEN": token}
    report = ("--stage", "imaging", "--percent", "50", "--message", "clean")
    progress = await contimg(target, "jobs", "progress", "cli-w", *report, env=lease_env)
    assert progress.code == 0, progress.err
    header, row = progress.out.splitlines()
    assert header.split()[:8] == ["NAME", "TYPE", "STATE", "STAGE", "PROGRESS", "ATTEMPT", "PRIORITY", "LEASE_HOLDER"]
    assert row.split()[:8] == ["jobs/cli-w", "IMAGE", "RUNNING", "IMAGING", "50%", "1/3", "5", "w1"]

    appended = await contimg(target, "jobs", "append-log", "cli-w", "first line", "second line")
    assert appended.code == 0 and appended.out.split() == ["LOG_LINES", "2"], appended.err
    piped = await contimg(target, "jobs", "append-log", "cli-w", "--json", stdin="third\nfourth\n")
    assert piped.json == {"log_line_count": 4}
    logs = await contimg(target, "jobs", "logs", "cli-w")
    assert logs.out.splitlines() == ["first line", "second line", "third", "fourth"]
    limited = await contimg(target, "jobs", "logs", "cli-w", "--json", "--limit", "1")
    assert [json.loads(line)["line_number"] for line in limited.out.splitlines()] == ["1"]

    stale = await contimg(target, "jobs", "fail", "cli-w", "boom", "--lease-token", "not-the-lease")
    assert stale.code == 5 and "FAILED_PRECONDITION" in stale.err and "LEASE_LOST" in stale.err
    done = await contimg(target, "jobs", "succeed", "cli-w", "/stage/x.fits", "images/7", "--json", env=lease_env)
    assert done.code == 0, done.err
    assert done.json["state"] == "STATE_SUCCEEDED" and done.json["artifacts"] == ["/stage/x.fits", "images/7"]
    again = await contimg(target, "jobs", "heartbeat", "cli-w", "--lease-token", token)
    assert again.code == 5 and "LEASE_LOST" in again.err


async def test_operator_commands(target: str) -> None:
    created = await contimg(target, "jobs", "create", "pipeline", "--id", "once", "--max-attempts", "1", "--json")
    assert created.code == 0, created.err
    started = await contimg(target, "jobs", "start", "once", "--worker", "op", "--json")
    assert started.json["state"] == "STATE_RUNNING" and started.json["lease_holder"] == "op"
    assert started.json["lease_token"]
    failed = await contimg(target, "jobs", "fail", "once", "out of disk", "--json")
    assert failed.json["state"] == "STATE_FAILED" and failed.json["error_message"] == "out of disk"
    exhausted = await contimg(target, "jobs", "retry", "once")
    assert exhausted.code == 5 and "RETRIES_EXHAUSTED" in exhausted.err
    retried = await contimg(target, "jobs", "retry", "once", "--ignore-attempt-limit", "--json")
    assert retried.code == 0 and retried.json["state"] == "STATE_PENDING", retried.err
    raised = await contimg(target, "jobs", "update", "once", "--priority", "9", "--json")
    assert raised.json["priority"] == 9
    cancelled = await contimg(target, "jobs", "cancel", "jobs/once", "--reason", "operator", "--json")
    assert cancelled.json["state"] == "STATE_CANCELLED"

    params = await contimg(target, "jobs", "create", "image", "--parameters", '{"cell": 2.5}', "--json")
    assert params.json["parameters"] == {"cell": 2.5}
    anonymous = await contimg(target, "jobs", "create", "image", env={"CONTIMG_TOKEN": ""})
    assert anonymous.code == 5 and "UNAUTHENTICATED" in anonymous.err


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "create", "imaging"],
        ["jobs", "claim", "--wait", "-1"],
        ["jobs", "progress", "a", "--percent", "101"],
        ["jobs", "progress", "a", "--stage", "cooking"],
        ["jobs", "create", "image", "--parameters", "[1]"],
        ["jobs", "fail", "a"],
    ],
)
async def test_bad_usage(args: list[str]) -> None:
    result = await contimg("127.0.0.1:1", *args)
    assert result.code == 2 and "usage:" in result.err and "Traceback" not in result.err


async def test_logs_follow_until_the_job_ends(target: str) -> None:
    async with AsyncClient(ClientConfig(target=target, token=TOKEN)) as client:
        job = await client.create_job(Job(type=Job.TYPE_IMAGE), "followed")
        await client.append_job_log(job.name, ["before start"])
        follow = asyncio.create_task(contimg(target, "jobs", "logs", "followed", "--follow"))
        await client.start_job(job.name)
        await asyncio.sleep(1.5)  # interpreter start-up; the first lines are printed meanwhile
        for i in range(3):
            await client.append_job_log(job.name, [f"step {i}"])
            await asyncio.sleep(0.3)
        for batch in range(2):  # 1200 lines: more than one page (a call takes at most 1000)
            await client.append_job_log(job.name, [f"bulk {i}" for i in range(batch * 600, batch * 600 + 600)])
        await client.succeed_job(job.name)
        result = await asyncio.wait_for(follow, 30)
    assert result.code == 0, result.err
    expected = ["before start", *(f"step {i}" for i in range(3)), *(f"bulk {i}" for i in range(1200))]
    assert result.out.splitlines() == expected
