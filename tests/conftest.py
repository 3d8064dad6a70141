"""Shared fixtures: a real server on an ephemeral port over a real database, real channels.

One suite, two engines: a test module that sets `ENGINES = ("sqlite", "postgres")` runs each of its
tests that start a server (the `server`, `stubs` and `server_factory` fixtures) once per engine. The
PostgreSQL runs use the server on 127.0.0.1:5432 (`CONTIMG_TEST_POSTGRES` overrides the URL), a
database of its own per test (made from a migrated template, emptied after the test for the next).
Where PostgreSQL is unreachable those runs fail, loudly; only outside CI may
`CONTIMG_TEST_SKIP_POSTGRES=1` skip them.

Servers run as users run them: one log line per RPC (pytest's log_level is INFO, so the logging
wrapper really formats every line), the write process on, and everything on uvloop (every test's
event loop is a uvloop one: `pytest_asyncio_loop_factories` below), as `contimg-server serve` does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
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


POSTGRES_URL = os.environ.get("CONTIMG_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        engines = getattr(metafunc.module, "ENGINES", ("sqlite",))
        metafunc.parametrize("engine", engines, scope="function")


@pytest.fixture
def engine() -> str:
    return "sqlite"


# A database migrated once per test session: each test's database is a copy of it (CREATE DATABASE
# ... TEMPLATE, ~0.37 s), and after the test it is emptied (TRUNCATE, ~0.06 s) and kept for the next
# test instead of dropped. Emptied means as a new copy would be: no rows, counters restarted, no
# schema version but the release's, connections allowed, and no page-token secret (the first server
# to open it makes one, so each database has its own, as if migrated by itself: a page token of one
# test's database is foreign to another's).
_template: list[str] = []
_free: list[str] = []
_DATA_TABLES = (
    "measurement_sets, images, sources, photometry, image_photometry, jobs, job_events, job_logs, request_ids"
)


def _url(name: str) -> str:
    return POSTGRES_URL.rsplit("/", 1)[0] + "/" + name


async def _template_database(admin: asyncpg.Connection) -> str:
    if not _template:
        from dsa110.contimg.server.storage.postgres.database import Database, PostgresSettings

        name = f"contimg_template_{uuid.uuid4().hex[:12]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        migrated = Database(PostgresSettings(_url(name), pool_min=1, pool_max=1))
        await migrated.open()
        await migrated.close()
        conn = await asyncpg.connect(_url(name))
        try:
            await conn.execute("DELETE FROM settings")
        finally:
            await conn.close()
        _template.append(name)
    return _template[0]


async def _empty(admin: asyncpg.Connection, name: str) -> bool:
    """Make a used test database as new; False if it could not be (then it is dropped)."""
    from dsa110.contimg.server.storage.postgres.migrations import MIGRATIONS

    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid != pg_backend_pid()",
            name,
        )
        conn = await asyncpg.connect(_url(name))
        try:
            async with conn.transaction():
                await conn.execute(f"TRUNCATE {_DATA_TABLES} RESTART IDENTITY CASCADE")
                await conn.execute("UPDATE job_event_counter SET last = 0")
                await conn.execute("DELETE FROM settings")
                await conn.execute("DELETE FROM schema_migrations WHERE version > $1", max(v for v, _, _ in MIGRATIONS))
        finally:
            await conn.close()
    except (asyncpg.PostgresError, OSError):
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        return False
    return True


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _template:
        return

    async def drop() -> None:
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for name in [*_free, *_template]:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(drop())


class PostgresDatabases:
    """Databases made for one test on the test PostgreSQL server, emptied (or dropped) after it."""

    def __init__(self) -> None:
        self.made: list[str] = []

    async def new(self) -> str:
        """A database with this release's schema and no data."""
        if os.environ.get("CONTIMG_TEST_SKIP_POSTGRES") == "1" and not os.environ.get("CI"):
            pytest.skip("CONTIMG_TEST_SKIP_POSTGRES=1 (never in CI)")
        if _free:
            name = _free.pop()
        else:
            name = f"contimg_test_{uuid.uuid4().hex[:12]}"
            admin = await asyncpg.connect(POSTGRES_URL)
            try:
                await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{await _template_database(admin)}"')
            finally:
                await admin.close()
        self.made.append(name)
        return _url(name)

    async def drop_all(self) -> None:
        if not self.made:
            return
        admin = await asyncpg.connect(POSTGRES_URL)
        try:
            for name in self.made:
                if await _empty(admin, name):
                    _free.append(name)
        finally:
            await admin.close()


@pytest.fixture
async def postgres_databases() -> AsyncIterator[PostgresDatabases]:
    databases = PostgresDatabases()
    yield databases
    await databases.drop_all()


@pytest.fixture
async def server_factory(
    tmp_path: Path, engine: str, postgres_databases: PostgresDatabases
) -> AsyncIterator[ServerFactory]:
    """Start servers on ephemeral ports; `database` lets two servers share one database (on
    PostgreSQL, servers started without one share the test's database)."""
    started: list[RunningServer] = []
    shared_url: list[str] = []

    async def start(database: Path | str | None = None, port: int = 0, **overrides: object) -> RunningServer:
        if database is None and engine == "postgres":
            if not shared_url:
                shared_url.append(await postgres_databases.new())
            database = shared_url[0]
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
