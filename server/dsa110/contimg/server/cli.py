"""`contimg-server`: serve, fill a database with demo data, or apply migrations."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from . import config as config_mod
from .accesslog import JsonFormatter
from .domain.errors import StartupError
from .domain.page_keys import GRACE_S, RELOAD_S
from .portclaim import AddressTaken, PortClaim, claim_port


def _run(coro: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            use_uvloop = False
    if use_uvloop:
        uvloop.run(coro)
    else:
        asyncio.run(coro)


def _start(coro: Coroutine[Any, Any, None], use_uvloop: bool) -> None:
    try:
        _run(coro, use_uvloop)
    except StartupError as exc:
        raise SystemExit(f"contimg-server: {exc}") from None


def _serve(cfg: config_mod.ServerConfig, demo_images: int, claim: PortClaim) -> None:
    from .app import serve

    async def run() -> None:
        if demo_images:
            # only when asked: serving must not need the demo package
            from dsa110.contimg.demo import fill_if_empty

            await fill_if_empty(cfg, demo_images)
        await serve(cfg, web_socket)

    def serve_one() -> None:
        try:
            _run(run(), cfg.uvloop)
        except StartupError as exc:  # a clear line, not a traceback (database unwritable, port taken, ...)
            raise SystemExit(f"contimg-server: {exc}") from None

    web_socket = None
    if cfg.workers > 1 and cfg.web_port:  # bound once, before the fork: every worker serves it
        from .web.listener import bind

        try:
            web_socket = bind(cfg.web_host or cfg.host, cfg.web_port)
        except StartupError as exc:
            raise SystemExit(f"contimg-server: {exc}") from None
    if cfg.workers > 1:
        from .workers import run_workers

        run_workers(cfg, serve_one, claim)
    else:
        serve_one()


def _backup_or_restore(cfg: config_mod.ServerConfig, args: argparse.Namespace) -> None:
    from .storage.sqlite.backup import BackupError, backup, restore

    if cfg.postgres:
        raise SystemExit(
            "contimg-server: on PostgreSQL use its own tools: pg_dump -Fc URL -f FILE (online, consistent), "
            "pg_restore -d URL FILE into an empty database (README)"
        )
    try:
        if args.command == "backup":
            done = backup(cfg.database_path, args.dest)
            print(
                f"backed up {cfg.database_path} to {done.path}: {done.bytes:,} bytes in {done.seconds:.1f} s, "
                "integrity ok"
            )
        else:
            done = restore(args.backup_file, cfg.database_path)
            print(f"restored {args.backup_file} to {done.path}: {done.bytes:,} bytes in {done.seconds:.1f} s")
    except BackupError as exc:
        raise SystemExit(f"contimg-server: {exc}") from None


def _read_key(path: Path) -> bytes:
    try:
        key = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"contimg-server: cannot read a hex key from {path}: {exc}") from None
    if len(key) < 16:
        raise SystemExit(f"contimg-server: {path} holds {len(key)} bytes; a page-token key needs at least 16")
    return key


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="contimg-server", description="DSA-110 continuum imaging gRPC backend")
    sub = parser.add_subparsers(dest="command", required=True)
    serve_p = sub.add_parser("serve", help="serve the gRPC API")
    config_mod.add_arguments(serve_p)
    serve_p.add_argument(
        "--demo-images",
        type=int,
        default=0,
        help="fill the database with this many demo images first, if it has none",
    )
    demo_p = sub.add_parser("demo-data", help="fill the database with realistic demo data")
    config_mod.add_arguments(demo_p)
    demo_p.add_argument("--images", type=int, default=1000, help="number of images (1,000 to 1,000,000)")
    demo_p.add_argument("--seed", type=int, default=110)
    demo_p.add_argument(
        "--catalog-sources",
        type=int,
        default=0,
        help="also load this many reference-catalog sources that no image measured (cone-search scale)",
    )
    migrate_p = sub.add_parser("migrate", help="create or upgrade the schema and exit")
    config_mod.add_arguments(migrate_p)
    copy_p = sub.add_parser(
        "copy-data", help="copy a whole SQLite database into an empty PostgreSQL database, and verify it"
    )
    config_mod.add_arguments(copy_p)
    copy_p.add_argument("--from", dest="copy_from", type=Path, required=True, help="the SQLite file")
    copy_p.add_argument("--to", dest="copy_to", required=True, help="postgresql://user@host:port/db (empty)")
    rotate_p = sub.add_parser(
        "rotate-page-token-key",
        help="add a new page-token key; every replica accepts it at once and signs with it after a grace period",
    )
    config_mod.add_arguments(rotate_p)
    rotate_p.add_argument(
        "--key-file",
        type=Path,
        help="the new key: a file of at least 32 hex digits (e.g. `openssl rand -hex 32`); default: random",
    )
    rotate_p.add_argument(
        "--signs-after-s",
        type=float,
        default=GRACE_S,
        help=f"seconds before the new key signs (default {GRACE_S:.0f}; under {RELOAD_S:.0f}, replicas not yet "
        "reloaded refuse the new key's tokens)",
    )
    backup_p = sub.add_parser("backup", help="copy the SQLite database, consistently, while it is served and written")
    config_mod.add_arguments(backup_p)
    backup_p.add_argument("dest", type=Path, help="the copy's path (must not exist)")
    restore_p = sub.add_parser("restore", help="put a backup in place of the SQLite database (stop the server first)")
    config_mod.add_arguments(restore_p)
    restore_p.add_argument("backup_file", type=Path, help="a file made by `contimg-server backup`")
    args = parser.parse_args(argv)
    cfg = config_mod.from_sources(args)
    logging.basicConfig(
        level=cfg.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if cfg.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())

    if args.command == "serve":
        # Before the database, gRPC and any fork: a second instance leaves the first one's alone.
        try:
            claim = claim_port(cfg.host, cfg.port)
        except AddressTaken as exc:
            raise SystemExit(f"contimg-server: {exc}") from None
        with claim:
            _serve(cfg, args.demo_images, claim)
    elif args.command == "demo-data":
        from dsa110.contimg.demo import fill

        async def run_demo() -> None:
            await fill(cfg, args.images, seed=args.seed, catalog_sources=args.catalog_sources)

        _start(run_demo(), cfg.uvloop)
    elif args.command == "copy-data":
        from .storage.postgres.copy import copy_database

        async def run_copy() -> None:
            started = time.perf_counter()
            reports = await copy_database(args.copy_from, args.copy_to)
            for r in reports:
                rate = f", {r.rows / r.seconds:,.0f} rows/s" if r.seconds > 0 and r.rows else ""
                print(f"{r.name}: {r.rows:,} rows in {r.seconds:.1f} s{rate}, checksum {r.checksum} (verified)")
            print(f"copied and verified in {time.perf_counter() - started:.1f} s")

        _start(run_copy(), False)
    elif args.command in ("backup", "restore"):
        _backup_or_restore(cfg, args)
    elif args.command == "rotate-page-token-key":
        from .storage.engine import rotate_page_token_key

        new = _read_key(args.key_file) if args.key_file else secrets.token_bytes(32)

        async def run_rotate() -> None:
            try:
                print(await rotate_page_token_key(cfg, new, args.signs_after_s))
            except ValueError as exc:
                raise SystemExit(f"contimg-server: {exc}") from None

        _start(run_rotate(), False)
    else:
        from .storage.engine import migrate_only

        async def run_migrate() -> None:
            print(await migrate_only(cfg))

        _start(run_migrate(), False)


if __name__ == "__main__":
    main()
