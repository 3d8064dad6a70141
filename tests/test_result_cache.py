"""Reused read results (readcache.py) are exact: any commit, by this server or another process on
the same database, makes the next read run again.

Two servers share one database (a SQLite file, or a PostgreSQL database); every read is asked twice
on A (so the second may come from the cache), then a write goes through B, then A must show it at
once: pages, totals, cone searches and image searches.
"""

from __future__ import annotations

import grpc
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

from conftest import ServerFactory, make_stubs
from helpers_jobs import make_image, make_ms, measurement, record

ENGINES = ("sqlite", "postgres")


async def test_cached_reads_follow_commits_from_another_process(server_factory: ServerFactory) -> None:
    a = await server_factory()  # servers started without a database share the test's
    b = await server_factory()
    async with grpc.aio.insecure_channel(a.target) as ch_a, grpc.aio.insecure_channel(b.target) as ch_b:
        sa, sb = make_stubs(ch_a), make_stubs(ch_b)
        ms = await make_ms(sb, "/data/ms/cache.ms", mid_mjd=60100.0)
        first = await make_image(sb, ms.name, "/data/images/cache-0.fits", 60100.0)
        await record(sb, first.name, [measurement("CACHE1", 150.0, 40.0)])

        list_req = images_pb2.ListImagesRequest(page_size=10)
        cone = sources_pb2.SearchSourcesRequest(ra_deg=150.0, dec_deg=40.0, radius_deg=1.0)
        covering = images_pb2.SearchImagesRequest(ra_deg=150.0, dec_deg=40.0)
        get_image = images_pb2.GetImageRequest(name=first.name)
        get_source = sources_pb2.GetSourceRequest(name="sources/CACHE1")
        lightcurve = sources_pb2.GetLightcurveRequest(name="sources/CACHE1")

        async def points() -> list[float]:
            return [p.observation_mjd async for r in sa.sources.GetLightcurve(lightcurve) for p in r.points]

        for _ in range(2):
            listed = await sa.images.ListImages(list_req)
            found = await sa.sources.SearchSources(cone)
            await sa.images.SearchImages(covering)
            image = await sa.images.GetImage(get_image)
            ms_before = await sa.ms.GetMeasurementSet(measurement_sets_pb2.GetMeasurementSetRequest(name=ms.name))
            source = await sa.sources.GetSource(get_source)
            curve = await points()
        assert [i.name for i in listed.images] == [first.name] and listed.total_size == 1
        assert [m.source.name for m in found.matches] == ["sources/CACHE1"]
        assert image.noise_jy == first.noise_jy != 0.5
        assert source.detection_count == 1 and curve == [60100.0]

        # Writes through the other process.
        second = await make_image(sb, ms.name, "/data/images/cache-1.fits", 60100.1)
        await record(sb, second.name, [measurement("CACHE2", 150.2, 40.1), measurement("CACHE1", 150.0, 40.0)])
        await sb.images.UpdateImage(
            images_pb2.UpdateImageRequest(
                image=images_pb2.Image(name=first.name, noise_jy=0.5), update_mask={"paths": ["noise_jy"]}
            )
        )

        assert (await sa.images.GetImage(get_image)).noise_jy == 0.5
        assert ms_before.image_count == 1
        ms_after = await sa.ms.GetMeasurementSet(measurement_sets_pb2.GetMeasurementSetRequest(name=ms.name))
        assert ms_after.image_count == 2
        assert (await sa.sources.GetSource(get_source)).detection_count == 2
        assert await points() == [60100.0, 60100.1]

        listed = await sa.images.ListImages(list_req)
        assert {i.name for i in listed.images} == {first.name, second.name} and listed.total_size == 2
        found = await sa.sources.SearchSources(cone)
        assert {m.source.name for m in found.matches} == {"sources/CACHE1", "sources/CACHE2"}
        assert found.total_size == 2
        cache1 = next(m.source for m in found.matches if m.source.name == "sources/CACHE1")
        assert cache1.detection_count == 2  # the statistics, not only the membership, are current

        # And a delete through A itself.
        await sa.images.DeleteImage(images_pb2.DeleteImageRequest(name=second.name, force=True))
        listed = await sb.images.ListImages(list_req)
        assert [i.name for i in listed.images] == [first.name] and listed.total_size == 1
        listed = await sa.images.ListImages(list_req)
        assert [i.name for i in listed.images] == [first.name] and listed.total_size == 1
        found = await sa.sources.SearchSources(cone)
        assert {m.source.name: m.source.detection_count for m in found.matches} == {
            "sources/CACHE1": 1,
            "sources/CACHE2": 0,
        }


async def test_repeated_pages_reuse_their_reply_until_a_commit(server_factory: ServerFactory) -> None:
    """A List or Search asked again, with nothing committed in between, is the reply kept from the
    first time (readcache.py), byte for byte; the first commit after makes it rebuild."""
    running = await server_factory()
    cache = running.server.storage.read_cache

    def memo_hits() -> int:
        return cache.hits

    async with grpc.aio.insecure_channel(running.target) as ch:
        s = make_stubs(ch)
        ms = await make_ms(s, "/data/ms/memo.ms", mid_mjd=60100.0)
        img = await make_image(s, ms.name, "/data/images/memo-0.fits", 60100.0)
        await record(s, img.name, [measurement("MEMO1", 150.0, 40.0), measurement("MEMO2", 150.1, 40.0)])
        calls = {
            "ListImages": (
                ch.unary_unary("/dsa110.contimg.v1.ImageService/ListImages"),
                images_pb2.ListImagesRequest(page_size=1),
            ),
            "SearchImages": (
                ch.unary_unary("/dsa110.contimg.v1.ImageService/SearchImages"),
                images_pb2.SearchImagesRequest(ra_deg=128.7, dec_deg=55.57),
            ),
            "ListSources": (
                ch.unary_unary("/dsa110.contimg.v1.SourceService/ListSources"),
                sources_pb2.ListSourcesRequest(page_size=1),
            ),
            "SearchSources": (
                ch.unary_unary("/dsa110.contimg.v1.SourceService/SearchSources"),
                sources_pb2.SearchSourcesRequest(ra_deg=150.0, dec_deg=40.0, radius_deg=1.0),
            ),
            "ListMeasurementSets": (
                ch.unary_unary("/dsa110.contimg.v1.MSService/ListMeasurementSets"),
                measurement_sets_pb2.ListMeasurementSetsRequest(),
            ),
            "ListJobs": (ch.unary_unary("/dsa110.contimg.v1.JobService/ListJobs"), jobs_pb2.ListJobsRequest()),
        }

        async def ask_all() -> dict[str, bytes]:
            return {name: await call(req.SerializeToString()) for name, (call, req) in calls.items()}

        first = await ask_all()
        hits, misses = memo_hits(), cache.misses
        again = await ask_all()
        assert again == first
        assert memo_hits() == hits + len(calls) and cache.misses == misses

        # One commit: every reply is rebuilt and shows it.
        later = await make_image(s, ms.name, "/data/images/memo-1.fits", 60100.1)
        await record(s, later.name, [measurement("MEMO1", 150.0, 40.0)])
        misses = cache.misses
        after = await ask_all()
        assert cache.misses >= misses + len(calls)  # every reply (and the items of the new rows) rebuilt
        assert images_pb2.ListImagesResponse.FromString(after["ListImages"]).total_size == 2
        assert len(images_pb2.SearchImagesResponse.FromString(after["SearchImages"]).matches) == 2
        assert (
            measurement_sets_pb2.ListMeasurementSetsResponse.FromString(after["ListMeasurementSets"])
            .measurement_sets[0]
            .image_count
            == 2
        )
        found = sources_pb2.SearchSourcesResponse.FromString(after["SearchSources"])
        assert {m.source.name: m.source.detection_count for m in found.matches}["sources/MEMO1"] == 2

        # The next page (the page token is part of the request) is its own reply.
        token = images_pb2.ListImagesResponse.FromString(after["ListImages"]).next_page_token
        assert token
        second_page = images_pb2.ListImagesRequest(page_size=1, page_token=token)
        assert (
            images_pb2.ListImagesResponse.FromString(await calls["ListImages"][0](second_page.SerializeToString()))
            .images[0]
            .name
            != images_pb2.ListImagesResponse.FromString(after["ListImages"]).images[0].name
        )

        # A request that fails keeps failing (nothing is kept for it).
        bad = sources_pb2.SearchSourcesRequest(ra_deg=150.0, dec_deg=40.0, radius_deg=-1.0)
        for _ in range(2):
            try:
                await s.sources.SearchSources(bad)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            else:
                raise AssertionError("a negative radius was accepted")


async def test_the_read_cache_is_bounded_by_bytes(server_factory: ServerFactory) -> None:
    """Every reply and item counts its bytes: 600 distinct image pages through a 1 MiB cache leave
    it at or under 1 MiB, holding the most recent replies; a reply over a sixteenth of the bound is
    sent but never kept."""
    running = await server_factory(read_cache_mb=1)
    cache = running.server.storage.read_cache
    async with grpc.aio.insecure_channel(running.target) as ch:
        s = make_stubs(ch)
        ms = await make_ms(s, "/data/ms/bound.ms", mid_mjd=60100.0)
        for i in range(80):
            await make_image(s, ms.name, f"/data/images/bound-{i}-{'x' * 900}.fits", 60100.0 + i / 1000)
        list_images = ch.unary_unary("/dsa110.contimg.v1.ImageService/ListImages")
        sizes = []
        for i in range(600):
            # Distinct requests for the same page: each reply is kept under its own bytes.
            request = images_pb2.ListImagesRequest(page_size=3, filter=f"mid_mjd > {59000 + i}")
            sizes.append(len(await list_images(request.SerializeToString())))
            assert cache.size <= cache.max_bytes
        assert cache.size > cache.max_bytes // 2
        assert len(cache) < 600
        big = images_pb2.ListImagesRequest(page_size=80)
        reply = await list_images(big.SerializeToString())
        assert len(images_pb2.ListImagesResponse.FromString(reply).images) == 80
        assert len(reply) > cache.max_bytes // 16
        assert ("ListImages", big.SerializeToString()) not in cache._entries
