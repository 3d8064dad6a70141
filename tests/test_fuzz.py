"""Bad input, generated with Hypothesis, for every RPC of the four services.

Requests are generated from the message descriptors, so every RPC and every field is covered and
new fields are fuzzed without edits here. Values are a mix of plausible ones (so calls get past
the first check and reach storage) and adversarial ones: strings up to ~1 MB, odd unicode, NUL,
`..`, `%2F`, SQL-looking text, NaN/inf and out-of-range numbers, negative and huge page sizes,
garbage, forged and foreign page tokens (and validly signed tokens with malformed contents),
unknown filter and order_by fields, repeated fields with thousands of elements, reused
request_ids, and undecodable bytes on the wire.

For each call: the status is never INTERNAL or UNKNOWN (nor UNAVAILABLE: nothing here should make
storage unavailable), the server still answers grpc.health.v1 with SERVING, and a call that failed
changed nothing in the database (every table's rows, read directly: helpers_stress.DirectSQL.digest).
Every test runs on SQLite and on PostgreSQL.

CONTIMG_FUZZ_EXAMPLES sets the examples per RPC (default 30; the whole file runs in well under 60 s).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import string
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from dsa110.contimg.server.config import ServerConfig
from dsa110.contimg.server.domain.listing import IMAGE_FIELDS, JOB_FIELDS, MS_FIELDS, SOURCE_FIELDS
from dsa110.contimg.server.domain.query import Kind, PageTokens, fingerprint
from dsa110.contimg.server.domain.records import IMAGE_UPDATABLE_FIELDS, MS_WRITABLE_FIELDS
from dsa110.contimg.server.servicers.handlers import request_limit
from dsa110.contimg.v1 import (
    images_pb2,
    jobs_pb2,
    measurement_sets_pb2,
    sources_pb2,
)
from google.protobuf import descriptor, duration_pb2, field_mask_pb2, message_factory, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningServer, ServerFactory, Stubs, make_stubs
from helpers_stress import DirectSQL, env_int

ENGINES = ("sqlite", "postgres")

MAX_MESSAGE_MB = ServerConfig().max_message_mb

EXAMPLES = env_int("CONTIMG_FUZZ_EXAMPLES", 30)
FD = descriptor.FieldDescriptor
BAD_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}
UNARY_TIMEOUT_S = 30.0
WATCH_TIMEOUT_S = 0.15

_MODULES = [
    (images_pb2, "ImageService"),
    (sources_pb2, "SourceService"),
    (jobs_pb2, "JobService"),
    (measurement_sets_pb2, "MSService"),
]
# (service, method descriptor) for every RPC of the contract.
RPCS: list[tuple[str, descriptor.MethodDescriptor]] = [
    (service, method) for module, service in _MODULES for method in module.DESCRIPTOR.services_by_name[service].methods
]
RPC_IDS = [f"{service}.{method.name}" for service, method in RPCS]

# ---- adversarial building blocks ----------------------------------------------------------------

SPECIAL_STRINGS = [
    "",
    " ",
    "\t\r\n",
    ".",
    "..",
    "../../etc/passwd",
    "/..",
    "/../../etc/passwd",
    "/a/../b",
    "%2F",
    "%2f",
    "%2F..%2F..%2Fetc%2Fpasswd",
    "%",
    "%Z",
    "%C0%AF",
    "%FF%FE",
    "%00",
    "\x00",
    "a\x00b",
    "/data/\x00.ms",
    '"; DROP TABLE images; --',
    "'; DROP TABLE jobs; --",
    "' OR '1'='1",
    "1 OR 1=1",
    "1; DELETE FROM sources",
    "*",
    "_",
    "%%",
    "\\",
    "\\x00",
    "\u202e\u0041\u0042",
    "\ufeff",
    "\u200b",
    "\U0001f4a9",
    "\U0010ffff",
    "\ufffd",
    "\u0130",
    "\ufb03",
    "e\u0301",
    "\u0663",
    "NaN",
    "-inf",
    "1e999",
    "null",
    "{}",
    "[]",
    "${jndi:ldap://x/a}",
    "%s%s%n",
    "<script>alert(1)</script>",
]
SPECIAL_FLOATS = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -0.0,
    5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    360.0,
    -1e-9,
    90.0000001,
    -90.0000001,
    1e20,
    -1.0,
]
INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
# Fixed request ids reused across examples: replays of identical requests and ABORTED mismatches.
REQUEST_IDS = [str(uuid.UUID(int=i)) for i in (1, 2, 3)]

small_text = st.text(max_size=24)
huge_text = st.builds(
    lambda chunk, size: chunk * max(1, size // len(chunk.encode())),
    st.text(min_size=1, max_size=3),
    st.integers(5_000, 1_000_000),
)


def any_text(small: bool = False) -> st.SearchStrategy[str]:
    options = [small_text, st.sampled_from(SPECIAL_STRINGS), st.text(max_size=600)]
    if not small:
        options.append(huge_text)
    return st.one_of(*options)


def _quoted(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


# ---- the seeded world the requests refer to -----------------------------------------------------


class World:
    """Existing resources and real page tokens, so generated requests hit real rows too."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {"image": [], "source": [], "job": [], "ms": []}
        self.paths: list[str] = []
        self.tokens: list[str] = []
        self.secret = b""

    @classmethod
    def example(cls) -> World:
        """Placeholder names, enough to build the regression cases for their ids."""
        world = cls()
        world.names = {"image": ["images/1", "images/2"], "source": [], "job": ["jobs/a"], "ms": []}
        world.paths = ["/a.ms"]
        return world


async def seed(stubs: Stubs, sql: DirectSQL) -> World:
    world = World()
    ms_paths = ["/data/fuzz/2025-10-28T13:30:07.ms", "/data/fuzz/with space/b.ms"]
    for i, path in enumerate(ms_paths):
        ms = await stubs.ms.CreateMeasurementSet(
            measurement_sets_pb2.CreateMeasurementSetRequest(
                measurement_set=measurement_sets_pb2.MeasurementSet(
                    path=path, mid_mjd=60976.5 + i, pointing_dec_deg=54.57, stage=1, status=2
                )
            )
        )
        world.names["ms"] += [ms.name, path]
        world.paths.append(path)
    for i in range(3):
        image = await stubs.images.CreateImage(
            images_pb2.CreateImageRequest(
                image=images_pb2.Image(
                    path=f"/data/fuzz/img{i}.fits",
                    measurement_set=world.names["ms"][0],
                    center_ra_deg=123.4,
                    center_dec_deg=54.57,
                    size_x_px=1024,
                    size_y_px=1024,
                    cell_size_arcsec=6.0,
                    noise_jy=0.001 * (i + 1),
                )
            )
        )
        world.names["image"].append(image.name)
        world.paths.append(image.path)
    await stubs.sources.RecordPhotometry(
        sources_pb2.RecordPhotometryRequest(
            image=world.names["image"][0],
            measurements=[
                sources_pb2.PhotometryMeasurement(
                    source=f"sources/J0834{i:02d}.9+5534{i:02d}",
                    ra_deg=123.4 + i * 0.01,
                    dec_deg=54.57,
                    peak_flux_jy=0.1 * (i + 1),
                    peak_flux_err_jy=0.01,
                )
                for i in range(5)
            ],
        )
    )
    world.names["source"] = [f"sources/J0834{i:02d}.9+5534{i:02d}" for i in range(5)]
    job_ids = ["fuzz-pending", "fuzz-running", "fuzz-failed", "fuzz-succeeded"]
    for job_id in job_ids:
        await stubs.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(
                job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE, measurement_set=world.names["ms"][0]), job_id=job_id
            )
        )
        world.names["job"].append(f"jobs/{job_id}")
    await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name="jobs/fuzz-running"))
    await stubs.jobs.FailJob(jobs_pb2.FailJobRequest(name="jobs/fuzz-failed", error_message="boom"))
    await stubs.jobs.StartJob(jobs_pb2.StartJobRequest(name="jobs/fuzz-succeeded"))
    await stubs.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name="jobs/fuzz-succeeded"))
    await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name="jobs/fuzz-running", lines=["a", "b", "c"]))
    # Real next-page tokens of every paged RPC: valid for their own query, foreign for any other.
    pages = [
        await stubs.images.ListImages(images_pb2.ListImagesRequest(page_size=1)),
        await stubs.images.SearchImages(images_pb2.SearchImagesRequest(ra_deg=123.4, dec_deg=54.57, page_size=1)),
        await stubs.sources.ListSources(sources_pb2.ListSourcesRequest(page_size=1)),
        await stubs.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=123.4, dec_deg=54.57, radius_deg=1, page_size=1)
        ),
        await stubs.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1)),
        await stubs.jobs.ListJobLogEntries(jobs_pb2.ListJobLogEntriesRequest(parent="jobs/fuzz-running", page_size=1)),
        await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(page_size=1)),
    ]
    world.tokens = [p.next_page_token for p in pages if p.next_page_token]
    assert len(world.tokens) == len(pages), "every seeded listing has a second page"
    [(secret,)] = await sql.fetch("SELECT value FROM settings WHERE key = 'page_token_secret'")
    world.secret = bytes(secret)
    return world


# ---- strategies from descriptors ----------------------------------------------------------------

_FILTER_FIELDS = {
    "ImageService": IMAGE_FIELDS,
    "SourceService": SOURCE_FIELDS,
    "JobService": JOB_FIELDS,
    "MSService": MS_FIELDS,
}
_MASK_PATHS = {
    "UpdateImageRequest": [*IMAGE_UPDATABLE_FIELDS, "name", "path", "measurement_set", "photometry_count"],
    "UpdateMeasurementSetRequest": [*MS_WRITABLE_FIELDS, "*", "name", "path", "image_count", "create_time"],
    "UpdateJobRequest": ["priority", "*", "name", "state", "create_time"],
}
_MAP_KEYS = ["rms_ratio", "beam_ellipticity", "flux_jy", "", "x" * 65, "\x00", "a.b", "*"]
_OUTPUT_ONLY = {"name", "path", "measurement_set", "photometry_count", "image_count", "create_time"}
# Fields a plausible request always sets (the others are drawn or left unset).
_REQUEST_KEY_FIELDS = {"name", "names", "parent", "image", "measurement_set", "measurements", "job", "stage"}
_RESOURCE_KEY_FIELDS = {"path", "measurement_set", "type", "source", "peak_flux_err_jy"}


def _name_kind(message: str, field: str) -> str | None:
    if field in ("image", "source", "measurement_set"):
        return {"measurement_set": "ms"}.get(field, field)
    if field not in ("name", "names", "parent"):
        return None
    for marker, kind in (
        ("Source", "source"),
        ("Lightcurve", "source"),
        ("Job", "job"),
        ("MeasurementSet", "ms"),
        ("Image", "image"),
    ):
        if marker in message:
            return kind
    return None


class Gen:
    """Request strategies for one service. `calm` draws plausible values (so calls reach storage);
    otherwise every value is drawn from the adversarial pools."""

    def __init__(self, world: World, service: str, *, calm: bool):
        self.world = world
        self.service = service
        self.calm = calm

    def pick(self, plausible: st.SearchStrategy[Any], *adversarial: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        if self.calm:
            return plausible
        return st.one_of(plausible, *adversarial)

    def text(self, small: bool) -> st.SearchStrategy[str]:
        return self.pick(st.text(alphabet=string.ascii_letters + string.digits + " -_.:", max_size=30), any_text(small))

    # strings ---------------------------------------------------------------------------------

    def names(self, kind: str, small: bool) -> st.SearchStrategy[str]:
        existing = st.sampled_from(self.world.names[kind])
        prefix = {"image": "images/", "source": "sources/", "job": "jobs/", "ms": "measurementSets/"}[kind]
        plausible_ids = {
            "image": st.integers(1, 10),
            "source": st.from_regex(r"J[0-9]{6}\.[0-9][+-][0-9]{6}", fullmatch=True),
            "job": st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
            "ms": st.sampled_from(["%2Fdata%2Fx.ms", "%2Fdata%2Ffuzz%2Fnew.ms"]),
        }[kind].map(lambda s: f"{prefix}{s}")
        garbage_ids = {
            "image": st.from_regex(r"[0-9]{1,22}", fullmatch=True),
            "source": st.from_regex(r"[A-Za-z0-9+\-._]{1,70}", fullmatch=True),
            "job": st.from_regex(r"[a-z][a-z0-9-]{0,70}", fullmatch=True),
            "ms": st.sampled_from(["%2F", "%2F..%2Fa", "a%2Fb", "%2Fa%00b", "%E2%82", "%2", "%2F%2F"]),
        }[kind]
        return self.pick(
            st.one_of(existing, existing, plausible_ids),
            garbage_ids.map(lambda s: prefix + s),
            st.sampled_from(["images/", "images/0", "images/-1", "images/1.5", "images/ 1", "images/1\n"]),
            st.sampled_from(["sources/", "jobs/", "jobs/A", "measurementSets/", "measurementSets/a/b", "/", "//"]),
            st.sampled_from(self.world.paths),
            any_text(small).map(lambda s: prefix + s),
            any_text(small),
        )

    def paths(self, small: bool) -> st.SearchStrategy[str]:
        fresh = st.text(alphabet=string.ascii_letters + string.digits + "-_.:/ ", min_size=1, max_size=60)
        return self.pick(
            st.one_of(fresh.map(lambda s: "/data/fuzz/new/" + s), st.sampled_from(self.world.paths)),
            any_text(small).map(lambda s: "/" + s),
            any_text(small),
        )

    def _valid_condition(self) -> st.SearchStrategy[str]:
        specs = _FILTER_FIELDS[self.service]

        def condition(name: str) -> st.SearchStrategy[str]:
            spec = specs[name]
            equality = st.sampled_from(["=", "!="])
            if spec.kind in (Kind.NUMBER, Kind.INTEGER):
                values = (
                    st.floats(allow_nan=False, allow_infinity=False).map(repr)
                    if spec.kind is Kind.NUMBER
                    else st.integers(-(2**62), 2**62).map(str)
                )
                ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
            elif spec.kind is Kind.BOOL:
                values, ops = st.sampled_from(["true", "false", "TRUE"]), equality
            elif spec.kind is Kind.ENUM:
                assert spec.enum is not None
                values, ops = st.sampled_from([m for m in spec.enum.__members__ if m != "UNSPECIFIED"]), equality
            elif spec.kind is Kind.TIME:
                values = st.datetimes(timezones=st.timezones()).map(lambda d: _quoted(d.isoformat()))
                ops = st.sampled_from(["<", ">=", "="])
            elif spec.kind is Kind.REF:
                values, ops = st.sampled_from(self.world.names["ms"]).map(_quoted), equality
            else:
                values, ops = st.text(max_size=20).map(_quoted), equality
            return st.builds(lambda o, v: f"{name} {o} {v}", ops, values)

        return st.sampled_from(sorted(specs)).flatmap(condition)

    def filters(self) -> st.SearchStrategy[str]:
        known = sorted(_FILTER_FIELDS[self.service])
        valid = st.one_of(st.just(""), st.lists(self._valid_condition(), min_size=1, max_size=4).map(" AND ".join))
        field = st.one_of(
            st.sampled_from(known),
            st.sampled_from(["id", "path", "sid", "rowid", "images.id", "1", "unknown_field", "qa", "a.b.c"]),
            small_text,
        )
        op = st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "==", "=~", "<>", "LIKE", ":", "IN", ""])
        value = st.one_of(
            st.floats().map(repr),
            st.integers(-(2**70), 2**70).map(str),
            st.sampled_from(
                [
                    "CONTINUUM",
                    "RUNNING",
                    "STATE_RUNNING",
                    "UNSPECIFIED",
                    "NaN",
                    "inf",
                    "1e999",
                    '"0001-01-01T00:00:00+01:00"',
                    '"9999-12-31T23:59:59-23:59"',
                    '"2025-10-28T13:30:07"',
                    '"abc',
                    '"\\u0000"',
                    '"\\ud800"',
                    '"; DROP TABLE images; --',
                    "1 OR 1=1",
                ]
            ),
            small_text.map(_quoted),
            small_text,
        )
        condition = st.one_of(self._valid_condition(), st.builds(lambda f, o, v: f"{f} {o} {v}", field, op, value))
        return self.pick(
            valid,
            st.lists(condition, min_size=1, max_size=4).map(" AND ".join),
            st.lists(condition, min_size=2, max_size=4).map(" OR ".join),
            st.builds(lambda c, n: " AND ".join([c] * n), condition, st.integers(30, 400)),
            any_text(),
        )

    def orders(self) -> st.SearchStrategy[str]:
        specs = _FILTER_FIELDS[self.service]
        sortable = sorted(k for k, s in specs.items() if s.sortable)
        direction = st.sampled_from(["", " desc", " asc", " DESC"])
        valid = st.one_of(
            st.just(""),
            st.lists(st.sampled_from(sortable), min_size=1, max_size=3, unique=True).flatmap(
                lambda keys: st.lists(direction, min_size=len(keys), max_size=len(keys)).map(
                    lambda dirs: ",".join(k + d for k, d in zip(keys, dirs, strict=True))
                )
            ),
        )
        field = st.one_of(
            st.sampled_from(sorted(specs)),
            st.sampled_from(["id", "rowid", "1", "random()", "(select 1)"]),
            small_text,
        )
        key = st.builds(lambda f, d: f + d, field, st.sampled_from(["", " desc", " sideways", " desc desc"]))
        return self.pick(
            valid,
            st.lists(key, min_size=1, max_size=4).map(",".join),
            st.builds(lambda k, n: ",".join([k] * n), key, st.integers(2, 300)),
            any_text(),
        )

    def tokens(self) -> st.SearchStrategy[str]:
        forged_body = st.builds(
            lambda mac, body: base64.urlsafe_b64encode(mac + body.encode()).decode().rstrip("="),
            st.binary(min_size=16, max_size=16),
            st.sampled_from(['{"a":[1,"x"],"q":"0"}', '{"a":[]}', "[]", "null", "{"]),
        )
        real = st.sampled_from(self.world.tokens)
        return self.pick(
            st.one_of(st.just(""), st.just(""), real),
            real.map(lambda t: t[:-1] + ("A" if t[-1] != "A" else "B")),
            real.map(lambda t: t[: len(t) // 2]),
            st.binary(max_size=200).map(lambda b: base64.urlsafe_b64encode(b).decode()),
            forged_body,
            any_text(),
        )

    def string(self, message: str, field: str, small: bool) -> st.SearchStrategy[str]:
        kind = _name_kind(message, field)
        if kind is not None:
            return self.names(kind, small)
        if field in ("path", "ms_path"):
            return self.paths(small)
        if field == "page_token":
            return self.tokens()
        if field == "filter":
            return self.filters()
        if field == "order_by":
            return self.orders()
        if field == "request_id":
            return self.pick(st.one_of(st.just(""), st.sampled_from(REQUEST_IDS), st.uuids().map(str)), any_text(small))
        if field == "job_id":
            return self.pick(
                st.one_of(
                    st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True),
                    st.sampled_from([n.removeprefix("jobs/") for n in self.world.names["job"]]),
                ),
                st.sampled_from(["a" * 64, "A", "-a", "job_1", "job/1", "j\x00"]),
                any_text(small),
            )
        if field == "quality_flag":
            return self.pick(st.sampled_from(["good", "edge", "blended", ""]), any_text(small))
        return self.text(small)

    # numbers ---------------------------------------------------------------------------------

    def double(self, field: str) -> st.SearchStrategy[float]:
        if "ra_deg" in field:
            plausible = st.floats(0, 360, exclude_max=True)
        elif "dec_deg" in field:
            plausible = st.floats(-90, 90)
        elif "mjd" in field:
            plausible = st.floats(60000, 61000)
        elif field == "radius_deg":
            plausible = st.floats(0, 10, exclude_min=True)
        elif "percent" in field:
            plausible = st.floats(0, 100)
        elif "err" in field:
            plausible = st.floats(1e-6, 1.0)
        elif field == "beam_pa_deg":
            plausible = st.floats(-360, 360)
        else:
            plausible = st.floats(0, 1e4)
        return self.pick(plausible, st.floats(), st.sampled_from(SPECIAL_FLOATS))

    def int32(self, field: str) -> st.SearchStrategy[int]:
        edges = [-(2**31), 2**31 - 1, -1, 0, 1, 1000, 1001, 10_000, 10_001, 100_001, 1_000_001]
        plausible = st.integers(1, 10) if field == "max_attempts" else st.integers(0, 1200)
        return self.pick(plausible, st.sampled_from(edges), INT32)

    def int64(self, field: str) -> st.SearchStrategy[int]:
        return self.pick(st.integers(0, 100), st.sampled_from([-(2**63), 2**63 - 1, -1, 2**53 + 1]), INT64)

    # well-known types --------------------------------------------------------------------------

    def timestamp(self) -> st.SearchStrategy[timestamp_pb2.Timestamp]:
        seconds = self.pick(st.integers(0, 4_102_444_800), INT64, st.sampled_from([-62135596801, 253402300800, 2**62]))
        nanos = self.pick(st.integers(0, 999_999_999), INT32)
        return st.builds(lambda s, n: timestamp_pb2.Timestamp(seconds=s, nanos=n), seconds, nanos)

    def duration(self, field: str) -> st.SearchStrategy[duration_pb2.Duration]:
        # ClaimJob serves its `wait` in full when no job comes: a plausible one is kept under a
        # second here (the call's 30 s deadline would bound it, 30 s per example).
        plausible = st.just(0) if field == "wait" else st.integers(0, 3600)
        seconds = self.pick(plausible, INT64, st.sampled_from([-1, 315_576_000_001]))
        nanos = self.pick(st.integers(0, 999_999_999), INT32)
        return st.builds(lambda s, n: duration_pb2.Duration(seconds=s, nanos=n), seconds, nanos)

    def struct(self, small: bool) -> st.SearchStrategy[struct_pb2.Struct]:
        finite = st.floats(allow_nan=False, allow_infinity=False)
        calm_leaf = st.one_of(st.none(), st.booleans(), finite, st.text(max_size=10))
        leaf = self.pick(
            calm_leaf, st.floats(), st.integers(-(2**70), 2**70).map(float), small_text, st.sampled_from(SPECIAL_FLOATS)
        )
        values = st.recursive(
            leaf,
            lambda children: st.one_of(
                st.lists(children, max_size=3), st.dictionaries(small_text, children, max_size=3)
            ),
            max_leaves=8,
        )

        def nest(depth: int) -> dict[str, Any]:
            value: dict[str, Any] = {"leaf": 1.0}
            for _ in range(depth):
                value = {"n": value}
            return value

        shapes = [st.dictionaries(st.text(max_size=10), values, max_size=4)]
        if not self.calm:
            shapes += [
                st.integers(1, 30).map(nest),  # as deep as the Python client can still encode
                st.builds(lambda n, t: {f"k{i}": t for i in range(n)}, st.integers(1, 200), st.text(max_size=800)),
            ]
            if not small:
                shapes.append(huge_text.map(lambda t: {"blob": t}))

        def build(d: dict[str, Any]) -> struct_pb2.Struct:
            s = struct_pb2.Struct()
            s.update(d)
            return s

        return st.one_of(*shapes).map(build)

    def mask(self, message: str) -> st.SearchStrategy[field_mask_pb2.FieldMask]:
        valid_paths = _MASK_PATHS.get(message, ["name"])
        path = self.pick(
            st.sampled_from([p for p in valid_paths if p not in _OUTPUT_ONLY]),
            st.sampled_from(valid_paths),
            st.sampled_from(["qa.metrics.x", "qa..grade", ".", "", "*", "image.noise_jy", "calibration_tables[0]"]),
            small_text,
        )
        lists = [st.lists(path, max_size=5)]
        if not self.calm:
            lists.append(st.builds(lambda p, n: [p] * n, path, st.integers(2, 3000)))
        return st.one_of(*lists).map(lambda paths: field_mask_pb2.FieldMask(paths=paths))

    # messages ----------------------------------------------------------------------------------

    def message(self, desc: descriptor.Descriptor, depth: int = 0, small: bool = False) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(desc)
        required: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        keys = _REQUEST_KEY_FIELDS if desc.name.endswith("Request") else _RESOURCE_KEY_FIELDS
        for f in desc.fields:
            (required if f.name in keys else optional)[f.name] = self.field(desc, f, depth, small)

        def build(values: dict[str, Any]) -> Message:
            return cls(**values)  # type: ignore[no-any-return]

        return st.fixed_dictionaries(required, optional=optional).map(build)

    def field(
        self, parent: descriptor.Descriptor, f: descriptor.FieldDescriptor, depth: int, small: bool
    ) -> st.SearchStrategy[Any]:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            keys = self.pick(st.sampled_from(_MAP_KEYS[:3]), st.sampled_from(_MAP_KEYS), small_text)
            entries = st.dictionaries(keys, self.double("metric"), max_size=4)
            if self.calm:
                return entries
            many = st.builds(lambda n, v: {f"m{i}": v for i in range(n)}, st.integers(60, 300), self.double("metric"))
            return st.one_of(entries, many)
        if f.is_repeated:
            element = self.single(parent, f, depth, small)
            if self.calm:
                return st.lists(element, max_size=20 if f.name == "measurements" else 3)
            element_small = self.single(parent, f, depth, True)
            return st.one_of(
                st.lists(element, max_size=3),
                st.lists(element_small, max_size=40),
                st.builds(lambda e, n: [e] * n, element_small, st.integers(0, 2500)),
            )
        return self.single(parent, f, depth, small)

    def single(
        self, parent: descriptor.Descriptor, f: descriptor.FieldDescriptor, depth: int, small: bool
    ) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FD.TYPE_MESSAGE:
            full = f.message_type.full_name
            if full == "google.protobuf.Timestamp":
                return self.timestamp()
            if full == "google.protobuf.Struct":
                return self.struct(small)
            if full == "google.protobuf.Duration":
                return self.duration(f.name)
            if full == "google.protobuf.FieldMask":
                return self.mask(parent.name)
            if depth >= 3:
                return st.just(message_factory.GetMessageClass(f.message_type)())
            return self.message(f.message_type, depth + 1, small)
        if t == FD.TYPE_STRING:
            return self.string(parent.name, f.name, small)
        if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            return self.double(f.name)
        if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
            return self.int32(f.name)
        if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
            return self.int64(f.name)
        if t == FD.TYPE_BOOL:
            return st.booleans()
        if t == FD.TYPE_ENUM:
            known = [v.number for v in f.enum_type.values]
            return self.pick(st.sampled_from([n for n in known if n] or known), st.sampled_from(known), INT32)
        if t == FD.TYPE_BYTES:
            return st.binary(max_size=64)
        raise AssertionError(f"no strategy for field type {t} ({f.full_name})")


def _assign(message: Message, f: descriptor.FieldDescriptor, value: Any) -> None:
    m: Any = message
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        getattr(m, f.name).clear()
        getattr(m, f.name).update(value)
    elif f.is_repeated:
        del getattr(m, f.name)[:]
        getattr(m, f.name).extend(value)
    elif f.type == FD.TYPE_MESSAGE:
        getattr(m, f.name).CopyFrom(value)
    else:
        setattr(m, f.name, value)


@st.composite
def requests(draw: st.DrawFn, world: World, service: str, desc: descriptor.Descriptor) -> Message:
    """A plausible request (often valid), the same with one field made adversarial, or chaos throughout.

    A mutation walks down into nested contract messages (and into one element of a repeated one),
    so a single bad value deep in an otherwise valid request reaches the code behind validation.
    """
    calm, chaos = Gen(world, service, calm=True), Gen(world, service, calm=False)
    mode = draw(st.sampled_from(["calm", "mutated", "mutated", "chaos"]), label="mode")
    if mode == "chaos":
        return draw(chaos.message(desc), label="request")
    request = draw(calm.message(desc), label="request")
    if mode == "mutated":
        target: Any = request
        parent = desc
        for _level in range(4):
            f = draw(st.sampled_from(list(parent.fields)), label="field")
            inner = f.message_type
            if inner is not None and inner.full_name.startswith("dsa110.") and not inner.GetOptions().map_entry:
                value = getattr(target, f.name)
                if f.is_repeated and len(value) and draw(st.booleans(), label="into element"):
                    target, parent = value[draw(st.integers(0, len(value) - 1), label="index")], inner
                    continue
                if not f.is_repeated and draw(st.booleans(), label="into message"):
                    target, parent = value, inner
                    continue
            _assign(target, f, draw(chaos.field(parent, f, 1, False), label="adversarial value"))
            break
    return request


# ---- validly signed page tokens with malformed contents ---------------------------------------


def _query_fingerprint(method: str, request: Message) -> str:
    r: Any = request
    if method == "ListJobLogEntries":
        return fingerprint(method, r.parent.removeprefix("jobs/"))
    if method == "SearchImages":
        return fingerprint(method, r.filter, "", r.ra_deg, r.dec_deg)
    if method == "SearchSources":
        return fingerprint(method, r.filter, "", r.ra_deg, r.dec_deg, r.radius_deg)
    return fingerprint(method, r.filter, r.order_by)


_keyset_value = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(),
    small_text,
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(small_text, st.integers(), max_size=2),
)


def signed_token(secret: bytes, method: str, request: Message, after: Any) -> str:
    """A token the server itself could have signed (e.g. before an upgrade), holding `after`."""
    body = json.dumps({"a": after, "q": _query_fingerprint(method, request)}, separators=(",", ":")).encode()
    mac = hmac.new(secret, body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def test_signed_token_helper_matches_the_server() -> None:
    secret = b"k" * 32
    request = images_pb2.ListImagesRequest(filter="mid_mjd > 1", order_by="noise_jy")
    expected = PageTokens(secret).encode([1, 2], _query_fingerprint("ListImages", request))
    assert signed_token(secret, "ListImages", request, [1, 2]) == expected


_PAGED = [
    ("images", "ListImages", images_pb2.ListImagesRequest(order_by="noise_jy desc")),
    ("images", "SearchImages", images_pb2.SearchImagesRequest(ra_deg=123.4, dec_deg=54.57)),
    ("sources", "ListSources", sources_pb2.ListSourcesRequest()),
    ("sources", "SearchSources", sources_pb2.SearchSourcesRequest(ra_deg=123.4, dec_deg=54.57, radius_deg=1)),
    ("jobs", "ListJobs", jobs_pb2.ListJobsRequest()),
    ("jobs", "ListJobLogEntries", jobs_pb2.ListJobLogEntriesRequest(parent="jobs/fuzz-running")),
    ("ms", "ListMeasurementSets", measurement_sets_pb2.ListMeasurementSetsRequest()),
]
_MALFORMED_AFTER: list[Any] = [
    ["abc", 1],
    [1, "abc"],
    [2**70, 1],
    [1, -(2**70)],
    [2**70],
    [float("nan"), 1],
    [True, False],
    [None, 1],
    [[1], 2],
    [{"a": 1}, 1],
    [],
    [1, 2, 3, 4, 5],
]


@pytest.mark.parametrize(("stub", "method", "request_"), _PAGED, ids=[p[1] for p in _PAGED])
async def test_signed_token_with_malformed_keyset(fuzz_env: Fixture, stub: str, method: str, request_: Message) -> None:
    """Signed tokens whose keyset has the wrong types (as another server version could have
    issued): INVALID_ARGUMENT or a page, never INTERNAL."""
    for after in _MALFORMED_AFTER:
        request = type(request_)()
        request.CopyFrom(request_)
        request.page_token = signed_token(fuzz_env.world.secret, method, request, after)  # type: ignore[attr-defined]
        try:
            await getattr(getattr(fuzz_env.stubs, stub), method)(request, timeout=30)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, f"{method} after={after!r}: {err.code()}"


# ---- the calls ----------------------------------------------------------------------------------


def _stub(stubs: Stubs, service: str) -> Any:
    return {
        "ImageService": stubs.images,
        "SourceService": stubs.sources,
        "JobService": stubs.jobs,
        "MSService": stubs.ms,
    }[service]


async def call_rpc(
    stubs: Stubs, service: str, method: descriptor.MethodDescriptor, request: Message
) -> grpc.StatusCode:
    """Make the call; return its status code (streams are read to the end or to a short deadline)."""
    fn = getattr(_stub(stubs, service), method.name)
    try:
        if method.server_streaming:
            timeout = WATCH_TIMEOUT_S if method.name.startswith("Watch") else UNARY_TIMEOUT_S
            async for _ in fn(request, timeout=timeout):
                pass
        else:
            await fn(request, timeout=UNARY_TIMEOUT_S)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and method.name.startswith("Watch"):
            return grpc.StatusCode.OK  # a watch that is still open when we hang up: expected
        assert err.code() not in BAD_CODES, f"{service}.{method.name} -> {err.code()}: {err.details()!r}"
        assert err.code() != grpc.StatusCode.DEADLINE_EXCEEDED, f"{service}.{method.name} took over {UNARY_TIMEOUT_S} s"
        if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            # Only a request over its method's size limit may get it here (one client, far below the
            # capacity limits): the server's message limit, or a read's own (servicers/handlers.py).
            limit = request_limit(method.name) or MAX_MESSAGE_MB << 20
            assert request.ByteSize() > limit, f"{service}.{method.name}: {err.details()!r}"
        return err.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


async def assert_serving(channel: grpc.aio.Channel) -> None:
    reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


class Fixture:
    def __init__(self, server: RunningServer, channel: grpc.aio.Channel, world: World, sql: DirectSQL):
        self.server = server
        self.channel = channel
        self.stubs = make_stubs(channel)
        self.world = world
        self.sql = sql  # reads the database directly: what a failed call must have left unchanged
        self.calls: dict[grpc.StatusCode, int] = {}
        self.strategies: dict[str, st.SearchStrategy[Message]] = {}


@pytest.fixture
async def fuzz_env(server_factory: ServerFactory) -> Any:
    server = await server_factory()
    async with grpc.aio.insecure_channel(
        server.target, options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)]
    ) as channel:
        stubs = make_stubs(channel)
        sql = await DirectSQL.connect(server.config.database, read_only=True)
        world = await seed(stubs, sql)
        env = Fixture(server, channel, world, sql)
        yield env
        await sql.close()
        await assert_serving(channel)
        if os.environ.get("CONTIMG_FUZZ_VERBOSE"):
            print(f"\n{sorted((c.name, n) for c, n in env.calls.items())}")


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one server per RPC, shared by its examples on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


async def _one(env: Fixture, service: str, method: descriptor.MethodDescriptor, request: Message) -> None:
    before = await env.sql.digest()
    code = await call_rpc(env.stubs, service, method, request)
    env.calls[code] = env.calls.get(code, 0) + 1
    await assert_serving(env.channel)
    if code != grpc.StatusCode.OK:
        after = await env.sql.digest()
        changed = {t: (before.get(t), after.get(t)) for t in after if before.get(t) != after.get(t)}
        assert not changed, f"{service}.{method.name} failed with {code} but changed {changed}"


@pytest.mark.parametrize(("service", "method"), RPCS, ids=RPC_IDS)
@FUZZ_SETTINGS
@given(data=st.data())
async def test_fuzz_rpc(
    fuzz_env: Fixture, service: str, method: descriptor.MethodDescriptor, data: st.DataObject
) -> None:
    strategy = fuzz_env.strategies.get(method.full_name)
    if strategy is None:
        strategy = fuzz_env.strategies[method.full_name] = requests(fuzz_env.world, service, method.input_type)
    request = data.draw(strategy)
    if "page_token" in method.input_type.fields_by_name and data.draw(st.integers(0, 4), label="sign") == 0:
        after = data.draw(st.lists(_keyset_value, max_size=4), label="after")
        request.page_token = signed_token(fuzz_env.world.secret, method.name, request, after)  # type: ignore[attr-defined]
    await _one(fuzz_env, service, method, request)


# ---- regressions: inputs that once produced INTERNAL or an unreadable error --------------------

MAX_TRAILER_BYTES = 8 * 1024  # gRPC's default soft limit on received metadata


def _known_bad(world: World) -> list[tuple[str, str, str, Message]]:
    nan_params, inf_params = struct_pb2.Struct(), struct_pb2.Struct()
    nan_params.update({"threshold": float("nan")})
    inf_params.update({"nested": {"x": [1.0, float("-inf")]}})
    far = timestamp_pb2.Timestamp(seconds=2**62)
    MS = measurement_sets_pb2.MeasurementSet
    image = images_pb2.Image(name=world.names["image"][0])
    return [
        (
            "nan-parameters",
            "jobs",
            "CreateJob",
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1, parameters=nan_params)),
        ),
        (
            "inf-parameters",
            "jobs",
            "CreateJob",
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=1, parameters=inf_params)),
        ),
        (
            "far-process-time",
            "ms",
            "CreateMeasurementSet",
            measurement_sets_pb2.CreateMeasurementSetRequest(measurement_set=MS(path="/fuzz/far.ms", process_time=far)),
        ),
        (
            "far-process-time-upsert",
            "ms",
            "UpdateMeasurementSet",
            measurement_sets_pb2.UpdateMeasurementSetRequest(
                measurement_set=MS(path=world.paths[0], process_time=timestamp_pb2.Timestamp(seconds=-(2**62))),
                update_mask=field_mask_pb2.FieldMask(paths=["process_time"]),
            ),
        ),
        (
            "negative-nanos",
            "ms",
            "CreateMeasurementSet",
            measurement_sets_pb2.CreateMeasurementSetRequest(
                measurement_set=MS(path="/fuzz/nanos.ms", process_time=timestamp_pb2.Timestamp(seconds=5, nanos=-1))
            ),
        ),
        (
            "far-measure-time",
            "sources",
            "RecordPhotometry",
            sources_pb2.RecordPhotometryRequest(
                image=world.names["image"][1],
                measurements=[
                    sources_pb2.PhotometryMeasurement(
                        source="sources/J000000.0+000000", peak_flux_jy=1, peak_flux_err_jy=0.1, measure_time=far
                    )
                ],
            ),
        ),
        ("long-order-by", "images", "ListImages", images_pb2.ListImagesRequest(order_by="x" * 20_000)),
        ("huge-order-by", "sources", "ListSources", sources_pb2.ListSourcesRequest(order_by="\U0001f4a9" * 300_000)),
        ("long-filter", "jobs", "ListJobs", jobs_pb2.ListJobsRequest(filter="x" * 1_000_000 + " = 1")),
        (
            "many-mask-paths",
            "images",
            "UpdateImage",
            images_pb2.UpdateImageRequest(
                image=image, update_mask=field_mask_pb2.FieldMask(paths=["bogus" * 20] * 3000)
            ),
        ),
        (
            "huge-mask-path",
            "images",
            "UpdateImage",
            images_pb2.UpdateImageRequest(image=image, update_mask=field_mask_pb2.FieldMask(paths=["p" * 1_000_000])),
        ),
        (
            "huge-ms-mask-path",
            "ms",
            "UpdateMeasurementSet",
            measurement_sets_pb2.UpdateMeasurementSetRequest(
                measurement_set=MS(path=world.paths[0]),
                update_mask=field_mask_pb2.FieldMask(paths=["\u00e9" * 500_000]),
            ),
        ),
        ("many-names", "images", "BatchGetImages", images_pb2.BatchGetImagesRequest(names=["images/x" * 100] * 5000)),
        (
            "many-bad-lines",
            "jobs",
            "AppendJobLog",
            jobs_pb2.AppendJobLogRequest(name=world.names["job"][0], lines=["\x00" + "l" * 5000] * 1000),
        ),
    ]


_KNOWN_BAD_IDS = [case[0] for case in _known_bad(World.example())]


@pytest.mark.parametrize("case", _KNOWN_BAD_IDS)
async def test_known_bad_input_is_invalid_argument(fuzz_env: Fixture, case: str) -> None:
    """Each is INVALID_ARGUMENT with error details small enough for any client to read; one larger
    than its method takes is refused before it is decoded (RESOURCE_EXHAUSTED, REQUEST_TOO_LARGE)."""
    [(_, stub, method, request)] = [c for c in _known_bad(fuzz_env.world) if c[0] == case]
    before = await fuzz_env.sql.digest()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(getattr(fuzz_env.stubs, stub), method)(request, timeout=30)
    err = caught.value
    oversized = 0 < request_limit(method) < request.ByteSize()
    expected = grpc.StatusCode.RESOURCE_EXHAUSTED if oversized else grpc.StatusCode.INVALID_ARGUMENT
    assert err.code() == expected, f"{err.code()}: {(err.details() or '')[:300]!r}"
    trailers = sum(len(k) + len(v) for k, v in err.trailing_metadata() or ())
    assert trailers < MAX_TRAILER_BYTES and len((err.details() or "").encode()) < 2048, trailers
    assert any(k == "grpc-status-details-bin" for k, _ in err.trailing_metadata() or ())
    await assert_serving(fuzz_env.channel)
    assert await fuzz_env.sql.digest() == before


# ---- undecodable bytes --------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _deep_struct(depth: int) -> bytes:
    """Struct{fields: {"a": Value{struct_value: ...}}} nested `depth` times, deeper than decoders allow."""
    s = b""
    for _ in range(depth):
        s = _len_field(1, _len_field(1, b"a") + _len_field(2, _len_field(5, s)))
    return s


@st.composite
def wire_bytes(draw: st.DrawFn, method: descriptor.MethodDescriptor) -> bytes:
    first_string = next((f for f in method.input_type.fields if f.type == FD.TYPE_STRING), None)
    options = [
        st.binary(max_size=64),
        st.sampled_from([b"\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\x05ab", b"\x08", b"\x0b\x0c", b"\x7a\x00"]),
        # CreateJobRequest.job.parameters (and any RPC: unknown field 1 of the wrong shape or too deep)
        st.integers(101, 400).map(lambda d: _len_field(1, b"\x10\x01" + _len_field(5, _deep_struct(d)))),
    ]
    if first_string is not None:  # invalid UTF-8 in a string field: impossible from a Python client, easy on the wire
        options.append(
            st.sampled_from([b"\xc3\x28", b"\xed\xa0\x80", b"\xff\xfe", b"ok\x80"]).map(
                lambda raw: _len_field(first_string.number, raw)
            )
        )
    return draw(st.one_of(*options))


@pytest.mark.parametrize(("service", "method"), RPCS, ids=RPC_IDS)
@settings(
    max_examples=max(5, EXAMPLES // 3),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
async def test_undecodable_request_bytes(
    fuzz_env: Fixture, service: str, method: descriptor.MethodDescriptor, data: st.DataObject
) -> None:
    payload = data.draw(wire_bytes(method), label="payload")
    path = f"/{method.containing_service.full_name}/{method.name}"
    before = await fuzz_env.sql.digest()
    try:
        if method.server_streaming:
            call = fuzz_env.channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            async for _ in call(payload, timeout=WATCH_TIMEOUT_S if method.name.startswith("Watch") else 10):
                pass
        else:
            await fuzz_env.channel.unary_unary(path, request_serializer=None, response_deserializer=None)(
                payload, timeout=10
            )
        code = grpc.StatusCode.OK
    except grpc.aio.AioRpcError as err:
        code = err.code()
        assert code not in BAD_CODES, f"{path} with {payload[:40]!r}: {code} {err.details()!r}"
    await assert_serving(fuzz_env.channel)
    if code not in (grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert await fuzz_env.sql.digest() == before


# ---- message size limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: (
            "images",
            "CreateImage",
            images_pb2.CreateImageRequest(image=images_pb2.Image(path="/" + "x" * (2 << 20), measurement_set="/a.ms")),
        ),
        lambda: ("jobs", "AppendJobLog", jobs_pb2.AppendJobLogRequest(name="jobs/a", lines=["y" * 4000] * 520)),
        lambda: ("images", "GetImage", images_pb2.GetImageRequest(name="images/" + "1" * (2 << 20))),
    ],
    ids=["CreateImage", "AppendJobLog", "GetImage"],
)
async def test_oversized_request_is_resource_exhausted(
    server_factory: ServerFactory, build: Callable[[], tuple[str, str, Message]]
) -> None:
    server = await server_factory(max_message_mb=1)
    stub_name, method, request = build()
    assert request.ByteSize() > 2_000_000
    async with grpc.aio.insecure_channel(server.target) as channel:
        stubs = make_stubs(channel)
        sql = await DirectSQL.connect(server.config.database, read_only=True)
        before = await sql.digest()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(getattr(stubs, stub_name), method)(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        await assert_serving(channel)
        assert await sql.digest() == before
        await sql.close()
        # The connection is still usable for normal calls.
        page = await stubs.ms.ListMeasurementSets(measurement_sets_pb2.ListMeasurementSetsRequest(), timeout=10)
        assert page.total_size == 0


async def test_oversized_response_is_resource_exhausted(server_factory: ServerFactory) -> None:
    """A reply larger than max_message_mb fails cleanly (RESOURCE_EXHAUSTED), not with INTERNAL."""
    server = await server_factory(max_message_mb=1)
    async with grpc.aio.insecure_channel(server.target) as channel:
        stubs = make_stubs(channel)
        job = await stubs.jobs.CreateJob(jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE)))
        for _ in range(2):
            await stubs.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=["z" * 4000] * 200))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.jobs.ListJobLogEntries(jobs_pb2.ListJobLogEntriesRequest(parent=job.name, page_size=1000))
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, caught.value.details()
        await assert_serving(channel)
        small = await stubs.jobs.ListJobLogEntries(jobs_pb2.ListJobLogEntriesRequest(parent=job.name, page_size=10))
        assert len(small.entries) == 10 and small.total_size == 400
