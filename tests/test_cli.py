"""The `contimg` command line, run as a real subprocess against a real server.

The server runs on the test's event loop, so the CLI is started with asyncio subprocesses (a
blocking subprocess.run would stall the server it talks to).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import pytest
from dsa110.contimg.client import AsyncClient, ClientConfig
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

from helpers_cli import contimg

ENGINES = ("sqlite", "postgres")

MS = measurement_sets_pb2.MeasurementSet
Image = images_pb2.Image
Job = jobs_pb2.Job
TOKEN = "cli-writer"
CALIBRATOR = "sources/J083454.9+553421"


@dataclass
class Seeded:
    target: str
    ms: Any
    images: list[Any]
    job: Any


@pytest.fixture
async def seeded(server_factory: Any) -> Seeded:
    server = await server_factory(write_tokens=TOKEN)
    async with AsyncClient(ClientConfig(target=server.target, token=TOKEN)) as client:
        ms = await client.create_measurement_set(
            MS(
                path="/stage/dsa110-contimg/ms/science/2025-10-28/2025-10-28T13:30:07.ms",
                mid_mjd=60976.5625,
                pointing_ra_deg=128.7,
                pointing_dec_deg=55.57,
            )
        )
        images = []
        for kind in ("image", "residual", "psf"):
            image = Image(
                path=f"/stage/dsa110-contimg/images/2025-10-28T13:30:07-{kind}.fits",
                measurement_set=ms.name,
                type=Image.TYPE_CONTINUUM,
                center_ra_deg=128.7,
                center_dec_deg=55.57,
                size_x_px=4096,
                size_y_px=4096,
                cell_size_arcsec=2.5,
                noise_jy=0.0006,
            )
            images.append(await client.create_image(image))
        await client.record_photometry(
            images[0].name,
            [
                sources_pb2.PhotometryMeasurement(
                    source=CALIBRATOR, ra_deg=128.7288, dec_deg=55.5725, peak_flux_jy=4.85, peak_flux_err_jy=0.01
                )
            ],
        )
        job = await client.create_job(Job(type=Job.TYPE_IMAGE, measurement_set=ms.name), "cli-job")
        await client.start_job(job.name)
        job = await client.succeed_job(job.name, [images[0].name])
    return Seeded(server.target, ms, images, job)


def _column(header: str, row: str, name: str) -> str:
    """The value of column `name` in `row`, located by the header's column positions."""
    start = header.index(name)
    rest = header[start + len(name) :]
    end = start + len(name) + (len(rest) - len(rest.lstrip())) if rest.strip() else len(row)
    return row[start:end].strip()


async def test_images_list_table(seeded: Seeded) -> None:
    result = await contimg("--target", seeded.target, "images", "list", "--order-by", "create_time")
    assert result.code == 0, result.err
    header, *rows = result.lines
    assert header.split()[:3] == ["NAME", "TYPE", "MID_MJD"]
    assert [_column(header, row, "NAME") for row in rows] == [i.name for i in seeded.images]
    assert {_column(header, row, "TYPE") for row in rows} == {"CONTINUUM"}
    assert all(_column(header, row, "PATH").endswith(".fits") for row in rows)


async def test_images_list_json_limit_and_paging(seeded: Seeded) -> None:
    result = await contimg(
        "images", "list", "--json", "--order-by", "create_time", "--page-size", "1", "--target", seeded.target
    )
    assert result.code == 0, result.err
    assert [json.loads(line)["name"] for line in result.lines] == [i.name for i in seeded.images]
    limited = await contimg("--target", seeded.target, "--json", "images", "list", "--limit", "2")
    assert len(limited.lines) == 2


async def test_get_commands(seeded: Seeded) -> None:
    image_id = seeded.images[0].name.removeprefix("images/")
    shown = await contimg("--target", seeded.target, "images", "get", image_id)
    assert shown.code == 0, shown.err
    fields = dict(line.split(None, 1) for line in shown.lines)
    assert fields["name"] == seeded.images[0].name and fields["measurement_set"] == seeded.ms.name

    both = await contimg("--target", seeded.target, "--json", "images", "get", *(i.name for i in seeded.images[:2]))
    assert [json.loads(line)["name"] for line in both.lines] == [i.name for i in seeded.images[:2]]

    by_path = await contimg("--target", seeded.target, "--json", "ms", "get", seeded.ms.path)
    assert json.loads(by_path.out)["name"] == seeded.ms.name
    listed = await contimg("--target", seeded.target, "ms", "list", "--filter", "pointing_dec_deg > 55")
    assert listed.code == 0 and seeded.ms.path in listed.out

    job = await contimg("--target", seeded.target, "jobs", "get", "cli-job")
    assert job.code == 0 and "STATE_SUCCEEDED" in job.out
    jobs = await contimg("--target", seeded.target, "jobs", "list", "--filter", "state = SUCCEEDED")
    header, row = jobs.lines
    assert _column(header, row, "STATE") == "SUCCEEDED" and _column(header, row, "NAME") == "jobs/cli-job"


async def test_source_commands(seeded: Seeded) -> None:
    cone = await contimg("--target", seeded.target, "sources", "search", "128.7", "55.57", "0.5")
    assert cone.code == 0, cone.err
    header, row = cone.lines
    assert _column(header, row, "NAME") == CALIBRATOR and float(_column(header, row, "SEP_DEG")) < 0.1

    sources = await contimg("--target", seeded.target, "--json", "sources", "list", "--filter", "dec_deg > 55")
    assert [json.loads(line)["name"] for line in sources.lines] == [CALIBRATOR]

    curve = await contimg("--target", seeded.target, "sources", "lightcurve", "J083454.9+553421")
    assert curve.code == 0, curve.err
    header, point = curve.lines
    assert _column(header, point, "PEAK_MJY") == "4850.000"
    assert float(_column(header, point, "OBS_MJD")) == pytest.approx(60976.5625)

    images = await contimg("--target", seeded.target, "--json", "images", "search", "128.8", "55.6")
    assert {json.loads(line)["image"]["name"] for line in images.lines} == {i.name for i in seeded.images}


async def test_jobs_watch(seeded: Seeded) -> None:
    finished = await contimg("--target", seeded.target, "jobs", "watch", "cli-job")
    assert finished.code == 0, finished.err
    header, snapshot = finished.lines
    assert _column(header, snapshot, "EVENT") == "SNAPSHOT" and _column(header, snapshot, "STATE") == "SUCCEEDED"

    follow = asyncio.create_task(contimg("--target", seeded.target, "--json", "jobs", "watch", "--limit", "2"))
    await asyncio.sleep(1.5)  # interpreter start-up and subscription
    async with AsyncClient(ClientConfig(target=seeded.target, token=TOKEN)) as client:
        job = await client.create_job(Job(type=Job.TYPE_CONVERT), "watched")
        await client.start_job(job.name)
    result = await follow
    assert result.code == 0, result.err
    events = [json.loads(line) for line in result.lines]
    assert [(e["type"], e["job"]["state"]) for e in events] == [
        ("TYPE_CREATED", "STATE_PENDING"),
        ("TYPE_STATE_CHANGED", "STATE_RUNNING"),
    ]


async def test_connection_settings_from_environment(seeded: Seeded) -> None:
    result = await contimg("images", "list", env={"CONTIMG_TARGET": seeded.target, "CONTIMG_DEADLINE": "5"})
    assert result.code == 0, result.err
    assert len(result.lines) == 1 + len(seeded.images)


async def test_not_found_exit_code(seeded: Seeded) -> None:
    result = await contimg("--target", seeded.target, "images", "get", "images/999")
    assert result.code == 3 and result.out == ""
    assert "NOT_FOUND" in result.err and "IMAGE_NOT_FOUND" in result.err and "Traceback" not in result.err
    job = await contimg("--target", seeded.target, "jobs", "watch", "no-such-job")
    assert job.code == 3 and "JOB_NOT_FOUND" in job.err


async def test_invalid_argument_exit_code(seeded: Seeded) -> None:
    result = await contimg("--target", seeded.target, "images", "list", "--filter", "noise_jy <")
    assert result.code == 2
    assert "INVALID_ARGUMENT" in result.err and "filter:" in result.err and "Traceback" not in result.err
    search = await contimg("--target", seeded.target, "sources", "search", "400", "10", "1")
    assert search.code == 2 and "ra_deg" in search.err


@pytest.mark.parametrize(
    "args",
    [
        ["images"],
        ["images", "frobnicate"],
        ["sources", "search", "1.0"],
        ["images", "list", "--page-size", "-3"],
        ["--deadline", "soon", "images", "list"],
        ["--tls-cert", "/nonexistent.pem", "images", "list"],
        ["--tls-ca", "/nonexistent.pem", "images", "list"],
        ["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent-key.pem", "images", "list"],
        ["--deadline", "nan", "images", "list"],
    ],
)
async def test_bad_usage_exit_code(args: list[str]) -> None:
    result = await contimg(*args)
    assert result.code == 2 and "usage:" in result.err and "Traceback" not in result.err


async def test_unavailable_exit_code() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await contimg("--target", f"127.0.0.1:{port}", "--deadline", "5", "jobs", "list")
    assert result.code == 4 and "UNAVAILABLE" in result.err and "Traceback" not in result.err


async def test_grpc_log_lines_stay_off_stderr(seeded: Seeded) -> None:
    """A TLS handshake with a plaintext server makes gRPC core log at INFO; the command shows only
    its own one-line error."""
    result = await contimg("--target", seeded.target, "--tls", "--deadline", "2", "images", "list")
    assert result.code == 4 and ("UNAVAILABLE" in result.err or "DEADLINE_EXCEEDED" in result.err)
    assert not re.search(r"^[IWE]\d{4} ", result.err, re.MULTILINE), result.err
