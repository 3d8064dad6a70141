"""Shared fixtures: a real server on an ephemeral port over a real SQLite file, real channels.

Servers run as users run them: one log line per RPC (pytest's log_level is INFO, so the logging
wrapper really formats every line), the write process on, and everything on uvloop (every test's
event loop is a uvloop one: `pytest_asyncio_loop_factories` below), as `contimg-server serve` does.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest
import uvloop
from dsa110.contimg.server.app import ContimgServer
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.storage.sqlite.database import Database, SQLiteSettings
from dsa110.contimg.v1 import images_pb2_grpc, jobs_pb2_grpc, measurement_sets_pb2_grpc, sources_pb2_grpc


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], object]]:
    """Every async test and fixture runs on uvloop, the loop `contimg-server serve` runs on."""
    return {"uvloop": uvloop.new_event_loop}


@dataclasses.dataclass
class Stubs:
    channel: grpc.aio.Channel
    images: images_pb2_grpc.ImageServiceStub
    sources: sources_pb2_grpc.SourceServiceStub
    jobs: jobs_pb2_grpc.JobServiceStub
    ms: measurement_sets_pb2_grpc.MSServiceStub


@dataclasses.dataclass
class RunningServer:
    server: ContimgServer
    config: ServerConfig

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def stop(self, grace: float = 1.0) -> None:
        await self.server.stop(grace)


ServerFactory = Callable[..., Awaitable[RunningServer]]


def make_stubs(channel: grpc.aio.Channel) -> Stubs:
    return Stubs(
        channel,
        images_pb2_grpc.ImageServiceStub(channel),
        sources_pb2_grpc.SourceServiceStub(channel),
        jobs_pb2_grpc.JobServiceStub(channel),
        measurement_sets_pb2_grpc.MSServiceStub(channel),
    )


@pytest.fixture
async def server_factory(tmp_path: Path) -> AsyncIterator[ServerFactory]:
    """Start servers on ephemeral ports; `database` lets two servers share one SQLite file."""
    started: list[RunningServer] = []

    async def start(database: Path | None = None, port: int = 0, **overrides: object) -> RunningServer:
        cfg = ServerConfig(
            host="127.0.0.1",
            port=port,
            data_dir=tmp_path,
            database=str(database or tmp_path / "contimg.sqlite3"),
            **{"allow_anonymous_writes": True, **overrides},  # type: ignore[arg-type]
        )
        srv = ContimgServer(cfg)
        await srv.start()
        running = RunningServer(srv, cfg)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop(0.5)


@pytest.fixture
async def server(server_factory: ServerFactory) -> RunningServer:
    return await server_factory()


@pytest.fixture
async def stubs(server: RunningServer) -> AsyncIterator[Stubs]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield make_stubs(channel)


async def open_scratch_database(path: Path, **settings: object) -> Database:
    """A Database on a new file holding one table, t (k TEXT PRIMARY KEY, v INTEGER), for the
    writer's own tests (test_write_groups.py, test_write_process.py)."""
    database = Database(SQLiteSettings(path, readers=1, **settings))  # type: ignore[arg-type]
    await database.open()
    await database.write(lambda txn: txn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)"))
    return database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_scratch_database(tmp_path / "scratch.sqlite3")
    yield database
    await database.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free port (no persistence); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); .ci/run installs it")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="contimg-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        raise RuntimeError("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)
