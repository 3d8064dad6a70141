"""The benchmark harness runs end to end (seconds-long loads; no timing assertions)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load missing (apt-get install nghttp2-client)")
def test_bench_smoke(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
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
