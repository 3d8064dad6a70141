"""`contimg` exports (CSV, VOTable), the lightcurve plot, sky positions and times as astronomers
write them, table footers, and the Python client's bare designations.

The CLI runs as a real subprocess against a real server (as in test_cli.py); CSV and VOTable are
read back with astropy and compared with the JSON output of the same command, value by value.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import Angle
from astropy.io import votable
from astropy.table import Table
from astropy.time import Time
from dsa110.contimg.client import AsyncClient, ClientConfig, coords, export, plot, times
from dsa110.contimg.client.cli import Output, _enum
from dsa110.contimg.v1 import images_pb2, measurement_sets_pb2, sources_pb2
from hypothesis import given
from hypothesis import strategies as st
from matplotlib import image as mpimg

from helpers_cli import contimg

TOKEN = "export-writer"
CALIBRATOR = "sources/J083454.9+553421"
VARIABLE = "sources/J083512.0+552000"
FIRST_MJD = 60976.5625
CALIBRATOR_FLUX = [4.85, 4.90, 4.80, 4.87, 4.83]
VARIABLE_FLUX = [0.05, 0.12, 0.20, 0.08, 0.15]


@dataclass
class Seeded:
    target: str
    images: list[Any]


@pytest.fixture
async def seeded(server_factory: Any) -> Seeded:
    """Five epochs of two sources: the steady calibrator and a variable one."""
    server = await server_factory(write_tokens=TOKEN)
    async with AsyncClient(ClientConfig(target=server.target, token=TOKEN)) as client:
        ms = await client.create_measurement_set(
            measurement_sets_pb2.MeasurementSet(
                path="/stage/dsa110-contimg/ms/science/2025-10-28/2025-10-28T13:30:07.ms",
                mid_mjd=FIRST_MJD,
                pointing_dec_deg=55.57,
            )
        )
        images = []
        for epoch in range(5):
            image = await client.create_image(
                images_pb2.Image(
                    path=f"/stage/dsa110-contimg/images/epoch{epoch}-image.fits",
                    measurement_set=ms.name,
                    type=images_pb2.Image.TYPE_CONTINUUM,
                    mid_mjd=FIRST_MJD + epoch,
                    center_ra_deg=128.7,
                    center_dec_deg=55.57,
                    size_x_px=4096,
                    size_y_px=4096,
                    cell_size_arcsec=2.5,
                    noise_jy=0.0006 + epoch * 1e-5,
                    qa=images_pb2.QualityAssessment(grade=images_pb2.QualityAssessment.GRADE_GOOD),
                )
            )
            images.append(image)
            Phot = sources_pb2.PhotometryMeasurement
            await client.record_photometry(
                image.name,
                [
                    Phot(
                        source=CALIBRATOR,
                        ra_deg=128.7288,
                        dec_deg=55.5725,
                        peak_flux_jy=CALIBRATOR_FLUX[epoch],
                        peak_flux_err_jy=0.05,
                        snr=97.0,
                        quality_flag="good",
                    ),
                    Phot(
                        source=VARIABLE,
                        ra_deg=128.8,
                        dec_deg=55.33334,  # 55:20:00.02, designated J083512.0+552000
                        peak_flux_jy=VARIABLE_FLUX[epoch],
                        peak_flux_err_jy=0.002,
                        snr=40.0,
                    ),
                ],
            )
    return Seeded(server.target, images)


# --------------------------------------------------------------------------------------------
# CSV and VOTable against JSON

COMMANDS = {
    "images list": (["images", "list", "--order-by", "mid_mjd"], images_pb2.Image),
    "sources search": (["sources", "search", "128.73", "55.5", "1"], sources_pb2.SourceMatch),
    "sources lightcurve": (["sources", "lightcurve", "J083512.0+552000"], sources_pb2.PhotometryMeasurement),
}


def _from_json(obj: dict[str, Any], field: export.Field) -> Any:
    """A column's value from a JSON object, as the proto JSON mapping writes it (defaults left out)."""
    value: Any = obj
    for part in field.path:
        value = value.get(part) if isinstance(value, dict) else None
    if field.kind == "enum":
        return "UNSPECIFIED" if value is None else value.split("_", 1)[1]
    if field.kind in ("str", "time"):
        return value or ""
    if field.kind == "bool":
        return bool(value)
    if field.kind == "float":
        return float(value or 0.0)
    return int(value or 0)  # 64-bit integers are JSON strings


def _cell(column: Any, row: int) -> Any:
    cell = column[row]
    if np.ma.is_masked(cell):  # an empty CSV cell
        return ""
    return cell.item() if hasattr(cell, "item") else cell


def _assert_same(table: Table, objects: list[dict[str, Any]], schema: Any) -> None:
    columns = export.fields(schema)
    assert table.colnames == [c.name for c in columns]
    assert len(table) == len(objects) > 0
    for column in columns:
        for row, obj in enumerate(objects):
            expected, got = _from_json(obj, column), _cell(table[column.name], row)
            if column.kind == "bool" and isinstance(got, str):
                got = {"True": True, "False": False}[got]  # astropy's CSV reader keeps True/False as text
            assert got == expected, (column.name, row, got, expected)


@pytest.mark.parametrize("command", list(COMMANDS))
async def test_csv_and_votable_read_back_to_the_json_values(seeded: Seeded, command: str) -> None:
    args, schema = COMMANDS[command]
    as_json = await contimg("--target", seeded.target, *args, "--format", "json")
    as_csv = await contimg("--target", seeded.target, *args, "--format", "csv")
    as_votable = await contimg("--target", seeded.target, *args, "--format", "votable")
    for result in (as_json, as_csv, as_votable):
        assert result.code == 0, result.err
    objects = [json.loads(line) for line in as_json.lines]
    legacy = await contimg("--target", seeded.target, "--json", *args)
    assert legacy.out == as_json.out  # --json is --format json

    csv_table = Table.read(as_csv.out, format="ascii.csv")
    assert as_csv.lines[0].split(",")[:2] == [c.name for c in export.fields(schema)][:2]  # a header row
    _assert_same(csv_table, objects, schema)
    vo_table = Table.read(io.BytesIO(as_votable.out.encode()), format="votable")
    _assert_same(vo_table, objects, schema)


async def test_votable_units_ucds_and_params(seeded: Seeded) -> None:
    curve = await contimg("--target", seeded.target, "sources", "lightcurve", VARIABLE, "--format", "votable")
    assert curve.code == 0, curve.err
    document = votable.parse(io.BytesIO(curve.out.encode()))
    table = document.get_first_table()
    fields = {f.name: f for f in table.fields}
    assert u.Unit(fields["peak_flux_jy"].unit) == u.Jy / u.beam
    assert u.Unit(fields["integrated_flux_jy"].unit) == u.Jy
    assert u.Unit(fields["ra_deg"].unit) == u.deg and fields["ra_deg"].ucd == "pos.eq.ra;meta.main"
    assert fields["dec_deg"].ucd == "pos.eq.dec;meta.main"
    assert u.Unit(fields["observation_mjd"].unit) == u.day and fields["observation_mjd"].ucd == "time.epoch"
    assert list(table.array["observation_mjd"]) == [FIRST_MJD + i for i in range(5)]
    params = {p.name: p for p in table.params}
    assert params["name"].value == VARIABLE and params["designation"].value == "J083512.0+552000"
    assert params["source_ra_deg"].value == pytest.approx(128.8) and u.Unit(params["source_ra_deg"].unit) == u.deg
    assert params["is_variable"].value and params["epoch_count"].value == 5
    assert params["mean_flux_jy"].value == pytest.approx(np.mean(VARIABLE_FLUX))
    assert u.Unit(params["mean_flux_jy"].unit) == u.Jy / u.beam

    images = Table.read(
        io.BytesIO((await contimg("--target", seeded.target, "images", "list", "--format", "votable")).out.encode()),
        format="votable",
    )
    assert images["center_ra_deg"].unit == u.deg and images["mid_mjd"].unit == u.day
    assert images["noise_jy"].unit == u.Jy / u.beam and images["cell_size_arcsec"].unit == u.arcsec
    assert set(images["type"]) == {"CONTINUUM"} and set(images["qa_grade"]) == {"GOOD"}


async def test_output_file(seeded: Seeded, tmp_path: Path) -> None:
    tmp_path = tmp_path / "out"  # the server's database is in tmp_path itself
    tmp_path.mkdir()
    target = tmp_path / "images.csv"
    result = await contimg("--target", seeded.target, "images", "list", "--format", "csv", "--output", str(target))
    assert result.code == 0, result.err
    assert result.out == ""
    stdout = await contimg("--target", seeded.target, "images", "list", "--format", "csv")
    assert target.read_text() == stdout.out
    assert target.stat().st_mode & 0o777 == 0o666 & ~export._umask()  # as open() makes files, not 0600
    assert os.listdir(tmp_path) == ["images.csv"]  # no temporary left

    failed = tmp_path / "failed.csv"
    missing = await contimg(
        "--target", seeded.target, "sources", "lightcurve", "J000000+000000", "--format", "csv", "-o", str(failed)
    )
    assert missing.code == 3 and not failed.exists()  # a failed call leaves no truncated file
    assert os.listdir(tmp_path) == ["images.csv"]

    nowhere = await contimg("--target", seeded.target, "images", "list", "--output", str(tmp_path / "no" / "x.csv"))
    assert nowhere.code == 2 and "no such directory" in nowhere.err


async def test_format_usage_errors(seeded: Seeded) -> None:
    both = await contimg("--target", seeded.target, "--json", "images", "list", "--format", "csv")
    assert both.code == 2 and "--json and --format csv" in both.err and "Traceback" not in both.err
    elsewhere = await contimg("--target", seeded.target, "images", "get", "1", "--format", "csv")
    assert elsewhere.code == 2 and "usage:" in elsewhere.err
    unknown = await contimg("--target", seeded.target, "images", "list", "--format", "fits")
    assert unknown.code == 2 and "invalid choice" in unknown.err


async def test_missing_extras_name_the_extra(seeded: Seeded, tmp_path: Path) -> None:
    hide = "import sys\nsys.modules['astropy'] = None\nsys.modules['matplotlib'] = None"
    vo = await contimg("--target", seeded.target, "images", "list", "--format", "votable", prelude=hide)
    assert vo.code == 2 and "contimg-grpc[science]" in vo.err and "astropy" in vo.err and vo.out == ""
    png = tmp_path / "curve.png"
    drawn = await contimg(
        "--target", seeded.target, "sources", "lightcurve", CALIBRATOR, "--plot", str(png), prelude=hide
    )
    assert drawn.code == 2 and "contimg-grpc[science]" in drawn.err and "matplotlib" in drawn.err
    assert not png.exists()
    csv = await contimg("--target", seeded.target, "images", "list", "--format", "csv", prelude=hide)
    assert csv.code == 0 and len(csv.lines) == 6  # CSV needs neither


# --------------------------------------------------------------------------------------------
# Tables: totals, "no results", enum names


async def test_table_footer_total_and_no_results(seeded: Seeded) -> None:
    listed = await contimg("--target", seeded.target, "images", "list")
    assert listed.code == 0, listed.err
    assert len(listed.lines) == 6 and listed.err.strip() == "5 results"  # stdout keeps only the table
    limited = await contimg("--target", seeded.target, "images", "list", "--limit", "2", "--page-size", "1")
    assert len(limited.lines) == 3 and limited.err.strip() == "2 of 5 results"
    empty = await contimg("--target", seeded.target, "images", "list", "--filter", "noise_jy > 1")
    assert empty.code == 0 and empty.lines[0].startswith("NAME") and len(empty.lines) == 1
    assert empty.err.strip() == "no results"
    one = await contimg("--target", seeded.target, "sources", "search", "08:34:54.9", "+55:34:21", "1arcmin")
    assert one.err.strip() == "1 result"
    as_json = await contimg("--target", seeded.target, "images", "list", "--json", "--filter", "noise_jy > 1")
    assert as_json.out == "" and as_json.err == ""  # machine formats carry no notes


def test_enum_names_in_tables() -> None:
    image = images_pb2.Image(type=images_pb2.Image.TYPE_PBCOR)
    assert _enum(image, "type") == "PBCOR"
    assert _enum(images_pb2.Image(), "type") == "-"
    image.type = 99  # type: ignore[assignment]  # a newer server's value: shown, not hidden
    assert _enum(image, "type") == "99"
    stream = io.StringIO()
    Output(False, stream).rows(
        [images_pb2.Image(name="images/1", type=images_pb2.Image.TYPE_PSF)], [("TYPE", lambda i: _enum(i, "type"))]
    )
    assert stream.getvalue().split() == ["TYPE", "PSF"]


def test_summary_wording() -> None:
    assert export.summary(0, 0) == "no results"
    assert export.summary(0, None) == "no results"
    assert export.summary(1, 1) == "1 result"
    assert export.summary(3, None) == "3 results"
    assert export.summary(5, 2000) == "5 of 2000 results"


# --------------------------------------------------------------------------------------------
# Plot


async def test_lightcurve_plot(seeded: Seeded, tmp_path: Path) -> None:
    png = tmp_path / "curve.png"
    result = await contimg("--target", seeded.target, "sources", "lightcurve", "J083512.0+552000", "--plot", str(png))
    assert result.code == 0, result.err
    assert len(result.lines) == 6  # the table as well
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = mpimg.imread(png)
    width_in, height_in = plot.FIGSIZE_IN
    assert pixels.shape[:2] == (round(height_in * plot.PLOT_DPI), round(width_in * plot.PLOT_DPI))
    assert float(pixels[..., :3].std()) > 0.05  # something was drawn
    # Red (a variable candidate's markers) is in the picture.
    red = (pixels[..., 0] > 0.75) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert red.sum() > 50

    async with AsyncClient(ClientConfig(target=seeded.target)) as client:
        curve = await client.get_lightcurve("J083512.0+552000")
    figure = plot.lightcurve_figure(curve)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "Observation time (MJD)"
    assert axes.get_ylabel() == "Peak flux density (mJy/beam)"
    assert axes.get_title() == "J083512.0+552000"
    bars = axes.containers[0]
    x, y = bars.lines[0].get_data()
    assert list(x) == [FIRST_MJD + i for i in range(5)]
    assert list(y) == pytest.approx([f * 1000 for f in VARIABLE_FLUX])
    mean = curve.source.variability.mean_flux_jy * 1000
    horizontal = [line for line in axes.get_lines() if len(set(line.get_ydata())) == 1]
    assert any(line.get_ydata()[0] == pytest.approx(mean) for line in horizontal)
    box = "\n".join(t.get_text() for t in axes.texts)
    for statistic in ("eta = ", "V = ", "chi2/dof = ", "mean = ", "epochs = 5", "VARIABLE candidate"):
        assert statistic in box
    assert f"eta = {curve.source.variability.eta:.3f}" in box
    assert axes.child_axes[0].get_xlabel() == "Date (UTC), 2025-10-28 to 2025-11-01"  # the calendar on top


def test_plot_of_an_empty_lightcurve(tmp_path: Path) -> None:
    curve = sources_pb2.GetLightcurveResponse()
    figure = plot.lightcurve_figure(curve, "sources/J000000+000000")
    assert figure.axes[0].get_title() == "J000000+000000"
    assert any(t.get_text() == "no measurements" for t in figure.axes[0].texts)
    plot.save_lightcurve(curve, tmp_path / "empty.png", "J000000+000000")
    assert mpimg.imread(tmp_path / "empty.png").shape[:2] == (500, 900)


# --------------------------------------------------------------------------------------------
# Positions and times on the command line


async def test_positions_and_times_on_the_command_line(seeded: Seeded) -> None:
    for position in (["08:34:54.9", "+55:34:21"], ["8h34m54.9s", "55d34m21s"], ["128.72875", "55.5725"]):
        found = await contimg("--target", seeded.target, "--json", "sources", "search", *position, "30arcsec")
        assert found.code == 0, (position, found.err)
        assert [json.loads(line)["source"]["name"] for line in found.lines] == [CALIBRATOR]
    south = await contimg("--target", seeded.target, "images", "search", "08:34:54.9", "-00:30:00")
    assert south.code == 0 and south.err.strip() == "no results", south.err  # read as a value, not an option
    south = await contimg("--target", seeded.target, "sources", "search", "128.7", "-0d30m", "1")
    assert south.code == 0, south.err

    between = ["--start", "2025-10-29", "--end", f"{FIRST_MJD + 2.5}"]
    window = await contimg("--target", seeded.target, "--json", "sources", "lightcurve", CALIBRATOR, *between)
    assert window.code == 0, window.err
    assert [json.loads(line)["observation_mjd"] for line in window.lines] == [FIRST_MJD + 1, FIRST_MJD + 2]
    iso = await contimg(
        "--target", seeded.target, "--json", "sources", "lightcurve", CALIBRATOR, "--start-mjd", "2025-10-31T12:00:00Z"
    )
    assert [json.loads(line)["observation_mjd"] for line in iso.lines] == [FIRST_MJD + 3, FIRST_MJD + 4]
    recent = await contimg("--target", seeded.target, "sources", "lightcurve", CALIBRATOR, "--start", "-2d")
    assert recent.code == 0 and recent.err.strip() == "no results", recent.err  # 2025's data is older

    for args, message in [
        (["sources", "search", "25:00:00", "55", "1"], "more than 24 hours"),
        (["sources", "search", "08:34:54.9", "+91:00:00", "1"], "outside [-90, 90]"),
        (["sources", "search", "08:61:00", "55", "1"], "minutes must be below 60"),
        (["sources", "search", "128", "55", "-1"], "radius must be positive"),
        (["sources", "lightcurve", CALIBRATOR, "--start", "2025"], "a year? write 2025-01-01"),
        (["sources", "lightcurve", CALIBRATOR, "--end", "last tuesday"], "cannot read"),
    ]:
        bad = await contimg("--target", seeded.target, *args)
        assert bad.code == 2 and "usage:" in bad.err and message in bad.err and "Traceback" not in bad.err, args


# --------------------------------------------------------------------------------------------
# The Python client takes bare designations and ids


async def test_client_accepts_bare_designations(seeded: Seeded) -> None:
    async with AsyncClient(ClientConfig(target=seeded.target)) as client:
        by_name = await client.get_source(CALIBRATOR)
        bare = await client.get_source("J083454.9+553421")
        assert bare == by_name and bare.name == CALIBRATOR
        both = await client.batch_get_sources(["J083454.9+553421", VARIABLE])
        assert [s.name for s in both.sources] == [CALIBRATOR, VARIABLE]
        curve = await client.get_lightcurve("J083512.0+552000")
        assert curve.source.name == VARIABLE and len(curve.points) == 5
        image_id = seeded.images[0].name.removeprefix("images/")
        assert (await client.get_image(image_id)).name == seeded.images[0].name
        assert [i.name for i in (await client.batch_get_images([image_id])).images] == [seeded.images[0].name]


def test_names_normalize_bare_ids() -> None:
    from dsa110.contimg.client import image_name, source_name

    assert source_name("J083454.9+553421") == source_name("sources/J083454.9+553421") == CALIBRATOR
    assert image_name(42) == image_name("42") == image_name("images/42") == "images/42"


# --------------------------------------------------------------------------------------------
# Parsing: edge cases


@pytest.mark.parametrize(
    ("text", "degrees"),
    [
        ("08:34:54.9", 128.72875),
        ("08 34 54.9", 128.72875),
        ("8h34m54.9s", 128.72875),
        ("8h 34m 54.9s", 128.72875),
        ("08h34m54.9", 128.72875),
        ("8H34M54.9S", 128.72875),
        ("128.72875", 128.72875),
        ("128.72875d", 128.72875),
        ("128.72875deg", 128.72875),
        ("128d43m43.5s", 128.72875),
        ("8.58191666666666667h", 128.72875),
        ("08:34", 128.5),
        ("08:34.5", 128.625),
        ("0", 0.0),
        ("00:00:00", 0.0),
        ("24:00:00", 0.0),  # 24h wraps to 0
        ("360", 0.0),
        ("23:59:59.999", 359.9999958333333),
        (" +12:00:00 ", 180.0),
    ],
)
def test_parse_ra(text: str, degrees: float) -> None:
    assert coords.parse_ra(text) == pytest.approx(degrees, abs=1e-12)


@pytest.mark.parametrize(
    ("text", "degrees"),
    [
        ("+55:34:21", 55.5725),
        ("55:34:21", 55.5725),
        ("-00:30:00", -0.5),  # the sign of the whole value, though the degrees are 0
        ("-00 30 00", -0.5),
        ("-0:0:36", -0.01),
        ("\u221200:30:00", -0.5),  # a typographic minus
        ("-0d30m", -0.5),
        ("-0d30m0s", -0.5),
        ("55d34m21s", 55.5725),
        ("55°34'21\"", 55.5725),
        ("55\u00b034\u203221\u2033", 55.5725),
        ("-90", -90.0),
        ("+90:00:00", 90.0),
        ("-0", 0.0),
        ("-.5", -0.5),
        ("16.27", 16.27),
    ],
)
def test_parse_dec(text: str, degrees: float) -> None:
    value = coords.parse_dec(text)
    assert value == pytest.approx(degrees, abs=1e-12)
    assert math.copysign(1, value) == math.copysign(1, degrees) or degrees == 0


@pytest.mark.parametrize(
    "text",
    ["", "abc", "24:00:01", "-1", "-00:00:01", "361", "08:60:00", "08:34:60", "08:34.5:10", "8h34", "1e3",
     "08:34:54.9:1", "8h34m54.9x", "nan", "inf"],
)  # fmt: skip
def test_parse_ra_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        coords.parse_ra(text)
    with pytest.raises(argparse.ArgumentTypeError, match="sexagesimal hours"):
        coords.ra_arg(text)


@pytest.mark.parametrize("text", ["", "91", "-90.0001", "+90:00:01", "55:60:00", "55:00:60", "8h", "--5", "+-5", "5-"])
def test_parse_dec_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        coords.parse_dec(text)
    with pytest.raises(argparse.ArgumentTypeError, match="sexagesimal degrees"):
        coords.dec_arg(text)


@pytest.mark.parametrize(
    ("text", "degrees"),
    [
        ("0.5", 0.5),
        ("0.5deg", 0.5),
        ("30arcmin", 0.5),
        ("30'", 0.5),
        ("90arcsec", 0.025),
        ('90"', 0.025),
        ("1e-3", 1e-3),
    ],
)
def test_parse_radius(text: str, degrees: float) -> None:
    assert coords.parse_radius(text) == pytest.approx(degrees)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "1 parsec", ""])
def test_parse_radius_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        coords.parse_radius(text)


def test_formatting() -> None:
    assert coords.format_ra(128.72875) == "08:34:54.90"
    assert coords.format_ra(359.9999999999) == "00:00:00.00"  # rounds up through 24h to 0
    assert coords.format_ra(15 * (59.999999 / 3600)) == "00:01:00.00"  # 59.999999 s carries
    assert coords.format_dec(-0.5) == "-00:30:00.0"
    assert coords.format_dec(55.5725) == "+55:34:21.0"
    assert coords.format_dec(-1e-9) == "+00:00:00.0"  # no negative zero


ra_degrees = st.floats(min_value=0, max_value=360, exclude_max=True, allow_nan=False)
dec_degrees = st.floats(min_value=-90, max_value=90, allow_nan=False)


@given(ra_degrees, st.integers(0, 6))
def test_ra_round_trip(degrees: float, places: int) -> None:
    text = coords.format_ra(degrees, places)
    back = coords.parse_ra(text)
    error = abs(back - degrees)
    error = min(error, 360 - error)  # 23:59:59.99... may round to 00:00:00
    assert error <= 15 * (0.5 * 10**-places) / 3600 + 1e-9


@given(dec_degrees, st.integers(0, 6))
def test_dec_round_trip(degrees: float, places: int) -> None:
    back = coords.parse_dec(coords.format_dec(degrees, places))
    assert abs(back - degrees) <= (0.5 * 10**-places) / 3600 + 1e-9


@given(st.integers(0, 23), st.integers(0, 59), st.floats(0, 59.999, allow_nan=False), st.booleans())
def test_ra_agrees_with_astropy(hours: int, minutes: int, seconds: float, letters: bool) -> None:
    sec = f"{seconds:.6f}"
    text = f"{hours}h{minutes}m{sec}s" if letters else f"{hours:02d}:{minutes:02d}:{sec}"
    expected = Angle(f"{hours}h{minutes}m{sec}s").degree
    assert coords.parse_ra(text) == pytest.approx(expected, abs=1e-9)


@given(st.integers(0, 89), st.integers(0, 59), st.floats(0, 59.999, allow_nan=False), st.sampled_from("+-"))
def test_dec_agrees_with_astropy(degrees: int, minutes: int, seconds: float, sign: str) -> None:
    sec = f"{seconds:.6f}"
    expected = Angle(f"{sign}{degrees}d{minutes}m{sec}s").degree
    assert coords.parse_dec(f"{sign}{degrees:02d}:{minutes:02d}:{sec}") == pytest.approx(expected, abs=1e-9)


NOW = datetime(2026, 12, 6, 4, 30, 0, tzinfo=UTC)
NOW_MJD = 61380 + 4.5 / 24


@pytest.mark.parametrize(
    ("text", "mjd"),
    [
        ("60976.5625", 60976.5625),
        ("MJD 60976.5", 60976.5),
        ("mjd60976.5", 60976.5),
        ("JD2460977.0625", 60976.5625),
        ("2025-10-28", 60976.0),
        ("2025-10-28T13:30:00", 60976.5625),
        ("2025-10-28 13:30:00", 60976.5625),
        ("2025-10-28T13:30:00Z", 60976.5625),
        ("2025-10-28T13:30:00z", 60976.5625),
        ("2025-10-28T15:30:00+02:00", 60976.5625),
        ("1858-11-17T00:00:00", 0.0),  # below the server's range: checked next
        ("now", NOW_MJD),
        ("NOW", NOW_MJD),
        ("today", 61380.0),
        ("yesterday", 61379.0),
        ("tomorrow", 61381.0),
        ("-2d", NOW_MJD - 2),
        ("-6h", NOW_MJD - 0.25),
        ("-30min", NOW_MJD - 30 / 1440),
        ("-1w", NOW_MJD - 7),
        ("+1d", NOW_MJD + 1),
        ("-1.5 days", NOW_MJD - 1.5),
    ],
)
def test_parse_time(text: str, mjd: float) -> None:
    if mjd < times.MJD_RANGE[0]:
        with pytest.raises(ValueError, match="outside"):
            times.parse_time(text, NOW)
        return
    assert times.parse_time(text, NOW) == pytest.approx(mjd, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("2025", "a year?"),
        ("2460977.0625", "a Julian Date?"),
        ("14999", "outside"),
        ("100001", "outside"),
        ("-2x", "cannot read"),
        ("2d", "cannot read"),
        ("2025-13-01", "cannot read"),
        ("last tuesday", "cannot read"),
        ("nan", "cannot read"),
    ],
)
def test_parse_time_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("?", r"\?")):
        times.parse_time(text, NOW)
    with pytest.raises(argparse.ArgumentTypeError, match="ISO date"):
        times.time_arg(text)


def test_times_relative_to_a_zoned_now() -> None:
    """`today` is the UTC day, whatever zone `now` is given in; a naive `now` is UTC."""
    early_in_sydney = datetime(2026, 12, 6, 1, 0, tzinfo=timezone(timedelta(hours=10)))  # 2026-12-05T15:00Z
    assert times.parse_time("today", early_in_sydney) == 61379.0
    assert times.parse_time("now", early_in_sydney) == pytest.approx(61379.625)
    assert times.parse_time("today", datetime(2026, 12, 6, 1, 0)) == 61380.0


@given(st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2130, 1, 1)))
def test_iso_times_agree_with_astropy(moment: datetime) -> None:
    text = moment.isoformat()
    # astropy's TAI scale has no leap seconds, as these MJD day fractions: the same calendar
    # arithmetic, done independently.
    expected = Time(text, format="isot", scale="tai").mjd
    assert times.parse_time(text) == pytest.approx(expected, abs=1e-8)
    assert abs(times.mjd_to_datetime(times.parse_time(text)) - moment.replace(tzinfo=UTC)) < timedelta(milliseconds=1)
