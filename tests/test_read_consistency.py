"""No reply is stale once a write has returned, whoever wrote (readcache.py).

Three writers share one database (a SQLite file, or a PostgreSQL database): the server under test
(A, read cache on, as it ships), a second server *process* (B), and a program writing the database
with SQL directly (C: no update_time kept, rows inserted and deleted behind the servers' backs).
Each round makes one random write through one of them, then asks A every cached read RPC twice (so
the second may be a reused reply) and holds each reply to an uncached server on the same database
(the oracle: `--read-cache-mb 0`). A difference is a stale read. On PostgreSQL a server learns of
another writer's commit by its notification, which can reach it just after the writer's reply; a
kept reply is reused only after a round trip on the listening session has brought every earlier
notification in (storage/postgres/changes.py), so no round waits for anything either.

Below it, the stale reads this design removed, each as it was reported: a row changed by SQL without
a new update_time (never shown until restart), and Redis troubles (a writer cut off from Redis, two
FLUSHALLs) that left lists stale for up to 30 s.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2
from google.protobuf.message import Message

from conftest import ServerFactory, make_stubs
from helpers_jobs import make_image, make_ms, measurement, record
from helpers_stress import DirectSQL, ServerProcess, env_int

IMAGES = "/dsa110.contimg.v1.ImageService/"
SOURCES = "/dsa110.contimg.v1.SourceService/"
JOBS = "/dsa110.contimg.v1.JobService/"
MS = "/dsa110.contimg.v1.MSService/"
ROUNDS = env_int("CONTIMG_CONSISTENCY_ROUNDS", 60)
ENGINES = ("sqlite", "postgres")

Reply = tuple[str, Any]  # ("ok", messages) or ("error", (code, details))


async def ask(channel: grpc.aio.Channel, path: str, request: Message, response: type[Message]) -> Reply:
    """One read as raw bytes (the cached path never parses: compare what was sent), then parsed."""
    try:
        if path.endswith("GetLightcurve"):
            call = channel.unary_stream(path)(request.SerializeToString())
            return "ok", [response.FromString(m) async for m in call]
        return "ok", [response.FromString(await channel.unary_unary(path)(request.SerializeToString()))]
    except grpc.aio.AioRpcError as exc:
        return "error", (exc.code(), exc.details())


class World:
    """What the writers know exists, to build valid writes and reads."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ms: list[str] = []
        self.images: list[str] = []  # names of images that exist
        self.measured: set[str] = set()  # images with photometry
        self.deleted: list[str] = []
        self.sources: list[str] = []
        self.jobs: list[str] = []
        self.serial = 0

    def next(self) -> int:
        self.serial += 1
        return self.serial


async def seed(s: Any, world: World) -> None:
    for m in range(2):
        ms = await make_ms(s, f"/data/ms/consistency-{m}.ms", mid_mjd=60200.0 + m)
        world.ms.append(ms.name)
    for i in range(6):
        img = await make_image(s, world.ms[i % 2], f"/data/images/consistency-{i}.fits", 60200.0 + i / 10)
        world.images.append(img.name)
    for i, name in enumerate(world.images[:4]):
        ids = [f"CON{k}" for k in range(i, i + 4)]
        await record(
            s, name, [measurement(sid, 128.7 + k / 50, 55.57, flux=0.01 * (k + 1)) for k, sid in enumerate(ids)]
        )
        world.measured.add(name)
        world.sources.extend(x for x in ids if x not in world.sources)
    for j in range(3):
        job = await s.jobs.CreateJob(
            jobs_pb2.CreateJobRequest(job=jobs_pb2.Job(type=jobs_pb2.Job.TYPE_IMAGE, measurement_set=world.ms[0]))
        )
        world.jobs.append(job.name)
        await s.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job.name, lines=[f"seeded {j}"]))


def reads(world: World, oracle_first_pages: dict[str, str]) -> list[tuple[str, Message, type[Message]]]:
    """Every cached read RPC, over what exists now (and a deleted image: NOT_FOUND both ways)."""
    images = world.images[:3] + world.deleted[-1:]
    sources = world.sources[:2] + world.sources[-1:]
    out: list[tuple[str, Message, type[Message]]] = []
    for name in images:
        out.append((IMAGES + "GetImage", images_pb2.GetImageRequest(name=name), images_pb2.Image))
    if len(world.images) >= 2:
        out.append(
            (
                IMAGES + "BatchGetImages",
                images_pb2.BatchGetImagesRequest(names=world.images[-2:]),
                images_pb2.BatchGetImagesResponse,
            )
        )
    for req in (
        images_pb2.ListImagesRequest(page_size=3),
        images_pb2.ListImagesRequest(page_size=4, filter="noise_jy > 0.0005", order_by="noise_jy desc"),
        images_pb2.ListImagesRequest(page_size=3, page_token=oracle_first_pages.get("images", "")),
    ):
        out.append((IMAGES + "ListImages", req, images_pb2.ListImagesResponse))
    out.append(
        (
            IMAGES + "SearchImages",
            images_pb2.SearchImagesRequest(ra_deg=128.7, dec_deg=55.57),
            images_pb2.SearchImagesResponse,
        )
    )
    for sid in sources:
        out.append((SOURCES + "GetSource", sources_pb2.GetSourceRequest(name=f"sources/{sid}"), sources_pb2.Source))
        out.append(
            (
                SOURCES + "GetLightcurve",
                sources_pb2.GetLightcurveRequest(name=f"sources/{sid}", max_points_per_message=2),
                sources_pb2.GetLightcurveResponse,
            )
        )
    out.append(
        (
            SOURCES + "BatchGetSources",
            sources_pb2.BatchGetSourcesRequest(names=[f"sources/{s}" for s in world.sources[:3]]),
            sources_pb2.BatchGetSourcesResponse,
        )
    )
    for req in (
        sources_pb2.ListSourcesRequest(page_size=5),
        sources_pb2.ListSourcesRequest(page_size=5, order_by="mean_flux_jy desc", filter="epoch_count >= 1"),
        sources_pb2.ListSourcesRequest(page_size=5, page_token=oracle_first_pages.get("sources", "")),
    ):
        out.append((SOURCES + "ListSources", req, sources_pb2.ListSourcesResponse))
    out.append(
        (
            SOURCES + "SearchSources",
            sources_pb2.SearchSourcesRequest(ra_deg=128.7, dec_deg=55.57, radius_deg=1.0, page_size=5),
            sources_pb2.SearchSourcesResponse,
        )
    )
    for job in world.jobs[:2]:
        out.append((JOBS + "GetJob", jobs_pb2.GetJobRequest(name=job), jobs_pb2.Job))
        out.append(
            (
                JOBS + "ListJobLogEntries",
                jobs_pb2.ListJobLogEntriesRequest(parent=job),
                jobs_pb2.ListJobLogEntriesResponse,
            )
        )
    out.append((JOBS + "ListJobs", jobs_pb2.ListJobsRequest(page_size=2), jobs_pb2.ListJobsResponse))
    for ms in world.ms[:2]:
        out.append(
            (
                MS + "GetMeasurementSet",
                measurement_sets_pb2.GetMeasurementSetRequest(name=ms),
                measurement_sets_pb2.MeasurementSet,
            )
        )
    out.append(
        (
            MS + "BatchGetMeasurementSets",
            measurement_sets_pb2.BatchGetMeasurementSetsRequest(names=world.ms[:2]),
            measurement_sets_pb2.BatchGetMeasurementSetsResponse,
        )
    )
    out.append(
        (
            MS + "ListMeasurementSets",
            measurement_sets_pb2.ListMeasurementSetsRequest(page_size=2),
            measurement_sets_pb2.ListMeasurementSetsResponse,
        )
    )
    return out


def api_writes(s: Any, world: World) -> list[Callable[[], Awaitable[object]]]:
    rng = world.rng

    async def update_image() -> object:
        name = rng.choice(world.images)
        image = images_pb2.Image(name=name, noise_jy=rng.choice([0.0003, 0.0006, 0.0009, 0.0012]))
        return await s.images.UpdateImage(
            images_pb2.UpdateImageRequest(image=image, update_mask={"paths": ["noise_jy"]})
        )

    async def create_image() -> object:
        n = world.next()
        img = await make_image(s, rng.choice(world.ms), f"/data/images/consistency-new-{n}.fits", 60201.0 + n / 100)
        world.images.append(img.name)
        return img

    async def record_photometry() -> object:
        unmeasured = [i for i in world.images if i not in world.measured]
        if not unmeasured:
            return await create_image()
        name = unmeasured[0]
        ids = [*rng.sample(world.sources, 2), f"NEW{world.next()}"]
        result = await record(
            s, name, [measurement(sid, 128.7 + rng.random() / 10, 55.57, flux=rng.uniform(0.01, 0.1)) for sid in ids]
        )
        world.measured.add(name)
        world.sources.extend(x for x in ids if x not in world.sources)
        return result

    async def delete_image() -> object:
        if len(world.images) <= 4:
            return await create_image()
        name = world.images.pop(rng.randrange(len(world.images)))
        world.deleted.append(name)
        world.measured.discard(name)
        return await s.images.DeleteImage(images_pb2.DeleteImageRequest(name=name, force=True))

    async def update_ms() -> object:
        ms = measurement_sets_pb2.MeasurementSet(name=rng.choice(world.ms), field_name=f"field-{world.next()}")
        return await s.ms.UpdateMeasurementSet(
            measurement_sets_pb2.UpdateMeasurementSetRequest(measurement_set=ms, update_mask={"paths": ["field_name"]})
        )

    async def job_step() -> object:
        job = rng.choice(world.jobs)
        step = rng.choice(["start", "progress", "log", "succeed"])
        try:
            if step == "start":
                return await s.jobs.StartJob(jobs_pb2.StartJobRequest(name=job))
            if step == "progress":
                return await s.jobs.ReportJobProgress(
                    jobs_pb2.ReportJobProgressRequest(name=job, progress_percent=rng.uniform(0, 100))
                )
            if step == "log":
                return await s.jobs.AppendJobLog(jobs_pb2.AppendJobLogRequest(name=job, lines=[f"line {world.next()}"]))
            return await s.jobs.SucceedJob(jobs_pb2.SucceedJobRequest(name=job))
        except grpc.aio.AioRpcError as exc:  # not a valid transition now: nothing was written
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
            return None

    return [update_image, create_image, record_photometry, delete_image, update_ms, job_step]


def direct_writes(db: DirectSQL, world: World) -> list[Callable[[], Awaitable[None]]]:
    """What a program with the database may do: no update_time kept, rows added and removed."""
    rng = world.rng

    async def image_noise() -> None:
        image_id = int(rng.choice(world.images).split("/")[1])
        await db.execute("UPDATE images SET noise_jy = ? WHERE id = ?", rng.choice([0.0002, 0.0007, 0.0011]), image_id)

    async def source_designation() -> None:
        designation = f"D{world.next()}"
        await db.execute("UPDATE sources SET designation = ? WHERE id = ?", designation, rng.choice(world.sources))

    async def source_statistic() -> None:
        await db.execute("UPDATE sources SET mean_flux_jy = mean_flux_jy * 1.5 WHERE id = ?", rng.choice(world.sources))

    async def ms_field() -> None:
        await db.execute(
            "UPDATE measurement_sets SET field_name = ? WHERE path = ?",
            f"sql-{world.next()}",
            rng.choice(world.ms).removeprefix("measurement_sets/"),
        )

    async def job_progress() -> None:
        await db.execute(
            "UPDATE jobs SET progress_percent = ? WHERE id = ?",
            rng.uniform(0, 100),
            rng.choice(world.jobs).removeprefix("jobs/"),
        )

    async def point_added() -> None:
        rows = await db.fetch("SELECT * FROM photometry")
        if rows:
            row = list(rng.choice(rows))
            row[1] += 0.01 * world.next()  # observation_mjd: a new epoch of the same source
            row[6] *= 1.3  # peak_flux_jy
            await db.execute(f"INSERT INTO photometry VALUES ({','.join('?' * len(row))})", *row)

    async def point_changed() -> None:
        await db.execute(
            "UPDATE photometry SET peak_flux_jy = peak_flux_jy * 0.5 WHERE (source_sid, observation_mjd, image_id) IN "
            "(SELECT source_sid, observation_mjd, image_id FROM photometry ORDER BY random() LIMIT 1)"
        )

    async def point_removed() -> None:
        await db.execute(
            "DELETE FROM photometry WHERE (source_sid, observation_mjd, image_id) IN "
            "(SELECT source_sid, observation_mjd, image_id FROM photometry ORDER BY random() LIMIT 1)"
        )

    async def log_line() -> None:
        job = rng.choice(world.jobs).removeprefix("jobs/")
        await db.execute(
            "INSERT INTO job_logs (job_id, line_number, time, text) "
            "SELECT CAST(? AS TEXT), coalesce(max(line_number), 0) + 1, 1, 'by sql' FROM job_logs WHERE job_id = ?",
            job,
            job,
        )
        await db.execute("UPDATE jobs SET log_line_count = log_line_count + 1 WHERE id = ?", job)

    return [
        image_noise,
        source_designation,
        source_statistic,
        ms_field,
        job_progress,
        point_added,
        point_changed,
        point_removed,
        log_line,
    ]


async def test_no_reply_is_stale_once_a_write_has_returned(server_factory: ServerFactory, tmp_path: Path) -> None:
    rng = random.Random(20261205)
    world = World(rng)
    cached = await server_factory()  # servers started without a database share the test's
    oracle = await server_factory(read_cache_mb=0)
    shared = cached.config.database
    other = ServerProcess(tmp_path, database=shared, name="other")
    await other.start()
    direct = await DirectSQL.connect(shared)
    compared = stale = 0
    try:
        async with (
            grpc.aio.insecure_channel(cached.target) as ch_a,
            grpc.aio.insecure_channel(oracle.target) as ch_o,
            grpc.aio.insecure_channel(other.target) as ch_b,
        ):
            a, b = make_stubs(ch_a), make_stubs(ch_b)
            await seed(a, world)
            writers = {"this server": api_writes(a, world), "another process": api_writes(b, world)}
            sql_writes = direct_writes(direct, world)
            differences: list[str] = []
            for round_number in range(ROUNDS):
                who = rng.choice(["this server", "another process", "sql"])
                if who == "sql":
                    write = rng.choice(sql_writes)
                    await write()
                else:
                    write = rng.choice(writers[who])
                    await write()
                # The write has returned. Every read now, twice: the second may be a kept reply.
                first_pages = {}
                for key, path, req in (
                    ("images", IMAGES + "ListImages", images_pb2.ListImagesRequest(page_size=3)),
                    ("sources", SOURCES + "ListSources", sources_pb2.ListSourcesRequest(page_size=5)),
                ):
                    status, value = await ask(
                        ch_o,
                        path,
                        req,
                        {"images": images_pb2.ListImagesResponse, "sources": sources_pb2.ListSourcesResponse}[key],
                    )
                    first_pages[key] = value[0].next_page_token if status == "ok" else ""
                calls = reads(world, first_pages)
                rng.shuffle(calls)
                for _ in range(2):
                    for path, request, response in calls:
                        got = await ask(ch_a, path, request, response)
                        want = await ask(ch_o, path, request, response)
                        compared += 1
                        if got != want:
                            stale += 1
                            differences.append(f"round {round_number} after {who}'s {write.__name__}: {path} {request}")
            assert stale == 0, f"{stale} of {compared} replies differ from an uncached read:\n" + "\n".join(
                differences[:10]
            )
            assert compared >= ROUNDS * 40
            hits = cached.server.storage.read_cache.hits
            assert hits > compared // 4, "the cache under test was hardly used"
    finally:
        await direct.close()
        other.terminate()


async def test_a_row_changed_by_sql_without_a_new_update_time_shows_at_once(server_factory: ServerFactory) -> None:
    """Reported: such a change never showed through the server until restart, and a List matched the
    new value while displaying the old one."""
    running = await server_factory()
    async with grpc.aio.insecure_channel(running.target) as ch:
        s = make_stubs(ch)
        ms = await make_ms(s, "/data/ms/sql.ms", mid_mjd=60300.0)
        img = await make_image(s, ms.name, "/data/images/sql.fits", 60300.0)
        await record(s, img.name, [measurement("SQL1", 128.7, 55.57, flux=0.02)])
        listed = images_pb2.ListImagesRequest(filter="noise_jy > 0.001")
        for _ in range(2):  # asked twice: kept
            assert (await s.images.GetImage(images_pb2.GetImageRequest(name=img.name))).noise_jy == 0.0004
            assert not (await s.images.ListImages(listed)).images
            assert (
                await s.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/SQL1"))
            ).designation != "renamed"
        conn = await DirectSQL.connect(running.config.database)
        await conn.execute("UPDATE images SET noise_jy = 0.005 WHERE id = ?", int(img.name.split("/")[1]))
        await conn.execute("UPDATE sources SET designation = 'renamed' WHERE id = 'SQL1'")
        await conn.close()
        assert (await s.images.GetImage(images_pb2.GetImageRequest(name=img.name))).noise_jy == 0.005
        [shown] = (await s.images.ListImages(listed)).images
        assert shown.noise_jy == 0.005
        source = await s.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/SQL1"))
        assert source.designation == "renamed"
        found = await s.sources.SearchSources(
            sources_pb2.SearchSourcesRequest(ra_deg=128.7, dec_deg=55.57, radius_deg=0.1)
        )
        assert [m.source.designation for m in found.matches] == ["renamed"]
        [curve] = [r async for r in s.sources.GetLightcurve(sources_pb2.GetLightcurveRequest(name="sources/SQL1"))]
        assert curve.source.designation == "renamed"


async def _list_names(s: Any) -> set[str]:
    return {i.name for i in (await s.images.ListImages(images_pb2.ListImagesRequest(page_size=100))).images}


async def test_redis_never_decides_what_a_read_shows(server_factory: ServerFactory, redis_server: str) -> None:
    """Reported with the Redis query cache: a writing replica cut off from Redis left the other
    replica's lists stale for 29.7-29.9 s, and two FLUSHALLs within 30 s left lists stale for 30 s.
    Reads no longer depend on Redis at all: both cases show the write at once."""
    reader = await server_factory(redis_url=redis_server)  # the three share the test's database
    # The writer's Redis is unreachable (a port nothing listens on): it writes without telling anyone.
    cut_off = await server_factory(redis_url="redis://127.0.0.1:9/0")
    flushed = await server_factory(redis_url=redis_server)
    async with (
        grpc.aio.insecure_channel(reader.target) as ch_r,
        grpc.aio.insecure_channel(cut_off.target) as ch_w,
        grpc.aio.insecure_channel(flushed.target) as ch_f,
    ):
        r, w, f = make_stubs(ch_r), make_stubs(ch_w), make_stubs(ch_f)
        flush = redis.asyncio.Redis.from_url(redis_server)
        ms = await make_ms(w, "/data/ms/redis.ms", mid_mjd=60300.0)
        first = await make_image(w, ms.name, "/data/images/redis-0.fits", 60300.0)
        for _ in range(2):
            assert await _list_names(r) == {first.name}
        second = await make_image(w, ms.name, "/data/images/redis-1.fits", 60300.1)
        assert await _list_names(r) == {first.name, second.name}

        for _ in range(2):
            await flush.flushall()
            assert await _list_names(r) == await _list_names(f)
        third = await make_image(f, ms.name, "/data/images/redis-2.fits", 60300.2)
        assert await _list_names(r) == {first.name, second.name, third.name}
        await flush.aclose()
