"""The benchmark harness runs end to end on both engines at once (seconds-long loads; no timing
assertions): `bench/run.py --engine both`, which also checks that the engines answer alike."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from conftest import POSTGRES_URL

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (apt-get install nghttp2-client)")
def test_bench_smoke(tmp_path: Path) -> None:
    name = f"contimg_bench_smoke_{os.getpid()}"
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(ROOT / "bench" / "run.py"),
                "--smoke",
                "--data-dir",
                str(tmp_path),
                "--engine",
                "both",
                "--postgres-url",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        asyncio.run(_drop(name))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "copied the SQLite database into" in out.stdout
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    cases = [line.split("|")[1].strip() for line in table[1:]]
    assert cases[:1] == ["case"] or cases[0].startswith("GetImage"), table
    assert any(c.startswith("ListImages") for c in cases) and any(c.startswith("GetLightcurve") for c in cases)
    for line in table[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "case" or set(cells[0]) <= {"-"}:
            continue
        assert float(cells[1]) > 0 and float(cells[2]) > 0, line  # both servers answered successfully
    assert "every watcher got every transition: True" in out.stdout
    assert "the reference's p99" in out.stdout  # the reference server answered WatchJob too
    assert "rows/s" in out.stdout
    for engine in ("sqlite", "postgres"):
        assert any(c.startswith("GetImage") and c.endswith(engine) for c in cases), cases
        assert f"WatchJob ({engine})" in out.stdout


async def _drop(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (apt-get install nghttp2-client)")
def test_web_load_smoke(tmp_path: Path) -> None:
    """bench/web_load.py: every browser protocol answers GetImage with an image (it raises on an
    error reply or a failed call), and the table has a row per protocol."""
    server = Path(sys.executable).with_name("contimg-server")
    subprocess.run(
        [str(server), "demo-data", "--data-dir", str(tmp_path), "--images", "200"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    command = [sys.executable, str(ROOT / "bench" / "web_load.py"), "--data-dir", str(tmp_path)]
    out = subprocess.run(
        [*command, "--rounds", "1", "--seconds", "0.3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "calls/s" not in line]
    assert len(rows) == 5, out.stdout
    for row in rows:
        assert float(row.split("|")[2].replace(",", "")) > 0, row
