"""Shared by the robustness tests (durability, fuzz, concurrency, load).

* `ServerProcess`: `contimg-server serve` as a real subprocess (the console script next to
  sys.executable), so it can be SIGKILLed, share a SQLite file with a second process, or have its
  RSS sampled from /proc.
* Read-only views of the SQLite file (`table_counts`, `db_digest`, `photometry_invariants`) that
  the tests compare before and after calls without going through the server; `DirectSQL`, the same
  kind of access to either engine's database (a SQLite file or a postgresql:// URL).
* `env_int` / `env_float`: test sizes that CI keeps small and a manual run turns up.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import free_port

CONSOLE_SCRIPT = Path(sys.executable).with_name("contimg-server")
SERVING = health_pb2.HealthCheckResponse.SERVING


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


class ServerProcess:
    """One `contimg-server serve` subprocess on a free loopback port; stderr goes to a log file."""

    def __init__(
        self,
        data_dir: Path,
        *,
        database: Path | str | None = None,
        args: Sequence[str] = (),
        name: str = "server",
        port: int = 0,
        write_token: str = "",
    ):
        """`write_token`: writes need it (the server's production stance); without one, anonymous
        writes are allowed (--allow-anonymous-writes, as scripts/serve.sh runs)."""
        self.write_token = write_token
        self.data_dir = data_dir
        self.database = database or data_dir / "contimg.sqlite3"  # or a postgresql:// URL
        self.args = list(args)
        self.log_path = data_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fixed_port = port  # 0: a free port at each start
        self.port = port
        self.starts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self, port: int) -> list[str]:
        return [
            str(CONSOLE_SCRIPT),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(self.data_dir),
            "--database",
            str(self.database),
            *(["--write-tokens", self.write_token] if self.write_token else ["--allow-anonymous-writes"]),
            *self.args,
        ]

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.port = self.fixed_port or free_port()
        with self.log_path.open("ab") as log:
            log.write(f"---- start {self.starts} on port {self.port}\n".encode())
            self.starts += 1
            return subprocess.Popen(
                self.command(self.port), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )

    async def start(self, wait_s: float = 30.0) -> None:
        """Start and wait until grpc.health.v1 reports SERVING; retries on a port race."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        for _attempt in range(3):
            self.proc = self._spawn()
            if await self._wait_serving(wait_s):
                return
            if self.proc.poll() is None:
                break
        self.kill()
        raise RuntimeError(f"contimg-server did not become SERVING; log tail:\n{self.log_tail()}")

    async def _wait_serving(self, wait_s: float) -> bool:
        deadline = time.monotonic() + wait_s
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return False  # exited (e.g. the port was taken meanwhile)
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                    if reply.status == SERVING:
                        return True
                except grpc.aio.AioRpcError:
                    pass
                await asyncio.sleep(0.05)
        return False

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or the OOM killer."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful drain); SIGKILL if it does not exit in time. Returns the exit status."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode)

    def rss_kib(self) -> int:
        """VmRSS of the server process, KiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS line")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def child_pids(pid: int) -> list[int]:
    """The children of `pid` (all its threads'), from /proc; [] once it has gone."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found.extend(int(child) for child in task.read_text().split())
        except OSError:  # the thread or the process exited meanwhile
            pass
    return found


def alive(pid: int) -> bool:
    """True while `pid` runs; False once it has exited, zombie included (its parent may be gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


async def until(condition: Callable[[], bool], what: str, wait_s: float = 30.0) -> None:
    """Poll `condition` until it holds; fail naming `what` after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {wait_s:.0f} s: {what}"
        await asyncio.sleep(0.05)


def write_processes_under(pid: int) -> list[int]:
    """The write processes (storage/sqlite/write_process.py) `pid` started, by their command lines."""
    return [child for child in child_pids(pid) if b"write_process" in _cmdline(child)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def write_processes_of(pids: list[int] | int) -> list[int]:
    """The write process of each server process in `pids` (each starts one once it serves)."""
    servers = [pids] if isinstance(pids, int) else pids
    await until(lambda: all(write_processes_under(p) for p in servers), "a write process under each server")
    return [w for p in servers for w in write_processes_under(p)]


async def health_status(target: str, service: str = "", wait_s: float = 5.0) -> int:
    async with grpc.aio.insecure_channel(target) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=wait_s
        )
        return int(reply.status)


# ---- read-only SQLite views ---------------------------------------------------------------------


def ro_connect(database: Path) -> sqlite3.Connection:
    """A read-only connection (never writes, never checkpoints the WAL away from the server)."""
    return sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]


def table_counts(database: Path) -> dict[str, int]:
    conn = ro_connect(database)
    try:
        return {t: int(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in _tables(conn)}
    finally:
        conn.close()


def db_digest(database: Path) -> dict[str, tuple[int, str]]:
    """Per table: row count and a hash of every row (in one read transaction, so one snapshot)."""
    conn = ro_connect(database)
    try:
        return _digest_of(conn)
    finally:
        conn.close()


def _digest_of(conn: sqlite3.Connection) -> dict[str, tuple[int, str]]:
    conn.execute("BEGIN")
    out: dict[str, tuple[int, str]] = {}
    for table in _tables(conn):
        h = hashlib.sha256()
        n = 0
        for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2'):
            h.update(repr(row).encode())
            n += 1
        out[table] = (n, h.hexdigest()[:16])
    conn.execute("COMMIT")
    return out


# The queries behind `photometry_invariants`, the same on both engines, read in one snapshot.
_PHOTOMETRY_QUERIES = (
    "SELECT image_id, count(*) FROM photometry GROUP BY image_id",
    "SELECT image_id, source_sids FROM image_photometry",
    "SELECT id, photometry_count FROM images",
    "SELECT s.id, s.detection_count, (SELECT count(*) FROM photometry p WHERE p.source_sid = s.sid) FROM sources s",
    "SELECT count(*) FROM photometry p WHERE NOT EXISTS (SELECT 1 FROM images i WHERE i.id = p.image_id)",
)


def photometry_invariants(database: Path, batch_size: int | None = None) -> list[str]:
    """Violations of the all-or-nothing photometry rules, read in one snapshot.

    For every image, photometry_count equals its photometry rows (and is 0 or `batch_size` when
    every batch has that size); for every source, detection_count equals its photometry rows.
    """
    conn = ro_connect(database)
    try:
        conn.execute("BEGIN")
        results = [conn.execute(sql).fetchall() for sql in _PHOTOMETRY_QUERIES]
        conn.execute("COMMIT")
    finally:
        conn.close()
    return _photometry_violations(results, batch_size)


def _photometry_violations(results: list[list[Any]], batch_size: int | None) -> list[str]:
    per_image, image_photometry, images, sources, [(orphans,)] = results
    problems: list[str] = []
    counts = dict((i, n) for i, n in per_image)
    # A JSON array on SQLite, bigint[] on PostgreSQL.
    listed = {i: json.loads(s) if isinstance(s, str) else list(s) for i, s in image_photometry}
    image_ids = set()
    for image_id, stored in images:
        image_ids.add(image_id)
        rows = counts.get(image_id, 0)
        if stored != rows:
            problems.append(f"images/{image_id}: photometry_count {stored} but {rows} photometry rows")
        if batch_size is not None and rows not in (0, batch_size):
            problems.append(f"images/{image_id}: half-written batch of {rows} rows (batch size {batch_size})")
        if len(listed.get(image_id, [])) != rows:
            problems.append(f"images/{image_id}: image_photometry lists {len(listed.get(image_id, []))} sources")
    if set(listed) - image_ids:
        problems.append(f"image_photometry rows of missing images: {sorted(set(listed) - image_ids)}")
    for source_id, stored, rows in sources:
        if stored != rows:
            problems.append(f"sources/{source_id}: detection_count {stored} but {rows} photometry rows")
    if orphans:
        problems.append(f"{orphans} photometry rows of missing images")
    return problems


def write_lock_free(database: Path) -> bool:
    """True when nobody holds a write transaction: BEGIN IMMEDIATE succeeds at once (then rolls back)."""
    conn = sqlite3.connect(str(database), timeout=0, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True
    finally:
        conn.close()


# ---- either engine ------------------------------------------------------------------------------


def is_postgres(database: Path | str) -> bool:
    return str(database).startswith(("postgresql://", "postgres://"))


class DirectSQL:
    """A program's own connection to the server's database, either engine: SQL with `?` placeholders
    (numbered $1, $2, ... on PostgreSQL), each statement committed on its own. `read_only` opens a
    SQLite file read-only (`ro_connect`: never checkpoints the WAL away from the server)."""

    def __init__(self, sqlite: sqlite3.Connection | None, pg: asyncpg.Connection | None):
        self.sqlite, self.pg = sqlite, pg

    @classmethod
    async def connect(cls, database: Path | str, read_only: bool = False) -> DirectSQL:
        if is_postgres(database):
            return cls(None, await asyncpg.connect(str(database)))
        if read_only:
            return cls(ro_connect(Path(database)), None)
        return cls(sqlite3.connect(database, isolation_level=None, timeout=10), None)

    @staticmethod
    def _numbered(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], 1))

    async def execute(self, sql: str, *args: object) -> None:
        if self.pg is not None:
            await self.pg.execute(self._numbered(sql), *args)
        else:
            assert self.sqlite is not None
            self.sqlite.execute(sql, args)

    async def fetch(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if self.pg is not None:
            return [tuple(r) for r in await self.pg.fetch(self._numbered(sql), *args)]
        assert self.sqlite is not None
        return [tuple(r) for r in self.sqlite.execute(sql, args)]

    async def close(self) -> None:
        if self.pg is not None:
            await self.pg.close()
        if self.sqlite is not None:
            self.sqlite.close()

    async def digest(self) -> dict[str, tuple[int, str]]:
        """`db_digest` on either engine: per table, its row count and a hash of every row, read in
        one snapshot (PostgreSQL: one REPEATABLE READ transaction over the public schema's tables)."""
        if self.pg is None:
            assert self.sqlite is not None
            return _digest_of(self.sqlite)
        out: dict[str, tuple[int, str]] = {}
        async with self.pg.transaction(isolation="repeatable_read", readonly=True):
            tables = await self.pg.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
            )
            for (table,) in tables:
                h = hashlib.sha256()
                rows = await self.pg.fetch(f'SELECT * FROM "{table}" ORDER BY 1, 2')
                for row in rows:
                    h.update(repr(tuple(row)).encode())
                out[table] = (len(rows), h.hexdigest()[:16])
        return out


async def no_transaction_open(database: Path | str) -> bool:
    """True when no server holds a transaction open on `database`: on SQLite, nobody holds the write
    lock (`write_lock_free`); on PostgreSQL, no session of a contimg server is inside a transaction."""
    if not is_postgres(database):
        return write_lock_free(Path(database))
    conn = await asyncpg.connect(str(database))
    try:
        open_ = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'contimg-server' AND xact_start IS NOT NULL AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return int(open_) == 0


async def photometry_problems(database: Path | str, batch_size: int | None = None) -> list[str]:
    """`photometry_invariants` on either engine (on PostgreSQL, in one repeatable-read snapshot)."""
    if not is_postgres(database):
        return photometry_invariants(Path(database), batch_size)
    conn = await asyncpg.connect(str(database))
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            results = [[tuple(r) for r in await conn.fetch(sql)] for sql in _PHOTOMETRY_QUERIES]
    finally:
        await conn.close()
    return _photometry_violations(results, batch_size)


async def exit_status(
    command: Sequence[str], log: Path, env: dict[str, str] | None = None, wait_s: float = 30.0
) -> int:
    """Run a command that should stop by itself (a refused start); its exit status. One that is
    still running after `wait_s` is killed, never left behind, and fails the test."""
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(*command, stderr=out, env=env)
        try:
            return await asyncio.wait_for(proc.wait(), wait_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"still running after {wait_s:.0f} s: {' '.join(command)}") from None
