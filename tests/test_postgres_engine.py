"""The PostgreSQL engine as a whole: its schema versions, replicas sharing one database, and what a
lost connection does to health. (Each resource's RPCs run on both engines in their own modules.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import grpc
import pytest
from dsa110.contimg.server.storage.postgres.migrations import MIGRATIONS
from dsa110.contimg.v1 import measurement_sets_pb2
from grpc_health.v1 import health_pb2

from conftest import PostgresDatabases, ServerFactory, make_stubs
from helpers_stress import CONSOLE_SCRIPT, health_status

ENGINES = ("postgres",)
LATEST = max(version for version, _, _ in MIGRATIONS)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONSOLE_SCRIPT), *args, "--port", "0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip


async def test_migrate_works_and_a_newer_schema_is_refused(postgres_databases: PostgresDatabases) -> None:
    url = await postgres_databases.new()
    done = await asyncio.to_thread(_run, "migrate", "--database", url)
    assert done.returncode == 0, done.stderr
    assert f"schema version {LATEST}" in done.stdout
    assert "postgres@" in done.stdout
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    finally:
        await conn.close()
    for command in ("serve", "migrate"):
        result = await asyncio.to_thread(_run, command, "--database", url)
        assert result.returncode != 0
        assert "Traceback" not in result.stderr, result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("contimg-server: ") and "schema version 99" in last and f"server's {LATEST}" in last
    conn = await asyncpg.connect(url)
    try:  # and nothing was changed
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 99
    finally:
        await conn.close()


async def _eventually(check: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        if await check():  # type: ignore[operator]
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.02)


async def test_a_write_through_one_replica_shows_on_another_that_had_cached_the_read(
    server_factory: ServerFactory,
) -> None:
    """The read cache of replica B is voided by A's commit (LISTEN/NOTIFY: storage/postgres/changes.py),
    and B's page tokens work on A (one shared key in the database)."""
    a = await server_factory()
    b = await server_factory()
    async with grpc.aio.insecure_channel(a.target) as ca, grpc.aio.insecure_channel(b.target) as cb:
        sa, sb = make_stubs(ca), make_stubs(cb)
        for i in range(3):
            await sa.ms.CreateMeasurementSet(
                measurement_sets_pb2.CreateMeasurementSetRequest(
                    measurement_set=measurement_sets_pb2.MeasurementSet(path=f"/data/ms/{i}.ms")
                )
            )
        listing = measurement_sets_pb2.ListMeasurementSetsRequest(page_size=2)

        async def b_sees(count: int) -> bool:
            page = await sb.ms.ListMeasurementSets(listing)
            return bool(page.total_size == count)

        await _eventually(lambda: b_sees(3))
        assert await b_sees(3)  # now kept in B's read cache
        await sa.ms.CreateMeasurementSet(
            measurement_sets_pb2.CreateMeasurementSetRequest(
                measurement_set=measurement_sets_pb2.MeasurementSet(path="/data/ms/new.ms")
            )
        )
        await _eventually(lambda: b_sees(4), timeout_s=2.0)

        first = await sb.ms.ListMeasurementSets(listing)
        rest = await sa.ms.ListMeasurementSets(
            measurement_sets_pb2.ListMeasurementSetsRequest(page_size=2, page_token=first.next_page_token)
        )
        paths = [m.path for m in first.measurement_sets] + [m.path for m in rest.measurement_sets]
        assert sorted(paths) == sorted({*paths}) and len(paths) == 4


async def test_health_follows_the_connection_to_postgresql(server_factory: ServerFactory) -> None:
    """The database unreachable (here: it refuses new connections to this database and ends the
    server's sessions, as a restart would) turns health NOT_SERVING and writes UNAVAILABLE; once it
    takes connections again the server reconnects by itself and serves."""
    running = await server_factory()
    url = running.config.database
    name = url.rsplit("/", 1)[1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    assert await health_status(running.target) == SERVING

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def status_is(wanted: int) -> bool:
        return await health_status(running.target) == wanted

    request = measurement_sets_pb2.CreateMeasurementSetRequest(
        measurement_set=measurement_sets_pb2.MeasurementSet(path="/data/ms/during.ms")
    )
    async with grpc.aio.insecure_channel(running.target) as channel:
        stubs = make_stubs(channel)
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        try:
            await admin(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE application_name = 'contimg-server' AND datname = '{name}'"
            )
            await _eventually(lambda: status_is(NOT_SERVING))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs.ms.CreateMeasurementSet(request)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await _eventually(lambda: status_is(SERVING), timeout_s=10.0)
        created = await stubs.ms.CreateMeasurementSet(request)
        assert created.path == "/data/ms/during.ms"


async def test_an_unreachable_database_stops_startup_with_one_clear_line() -> None:
    result = await asyncio.to_thread(_run, "serve", "--database", "postgresql://postgres@127.0.0.1:9/nowhere")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("contimg-server: ") and "postgres@127.0.0.1:9/nowhere" in last
