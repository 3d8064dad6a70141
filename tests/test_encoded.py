"""Replies sent as pre-encoded bytes are exactly the messages the message path produced.

List, Search and BatchGet replies and lightcurve messages are concatenations of cached item bytes
that leave without a parse (servicers/encoded.py). These tests read them raw off the wire and hold
them to the message path: each reply is byte for byte the serialization of its parsed message
(what the former parse-then-serialize sent), its items are what the Get methods return, cached
lightcurves follow every write to their source, and errors still carry the rich status.
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from dsa110.contimg.server.servicers.encoded import (
    Encoded,
    double_field,
    field_bytes,
    page,
    serializer,
    string_field,
    uint_field,
    unframe,
)
from dsa110.contimg.server.servicers.handlers import method_handlers
from dsa110.contimg.v1 import images_pb2, sources_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helpers_jobs import expect_error, make_images, measurement, record

ENGINES = ("sqlite", "postgres")

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
IMAGES = "/dsa110.contimg.v1.ImageService/"
SOURCES = "/dsa110.contimg.v1.SourceService/"


async def raw(channel: grpc.aio.Channel, method: str, request: Message) -> bytes:
    reply: bytes = await channel.unary_unary(method)(request.SerializeToString())
    return reply


async def raw_stream(channel: grpc.aio.Channel, method: str, request: Message) -> list[bytes]:
    return [m async for m in channel.unary_stream(method)(request.SerializeToString())]


def canonical(cls: type[Message], data: bytes) -> Message:
    """The parsed reply, after checking `data` is exactly its serialization (what the old path sent)."""
    message = cls.FromString(data)
    assert message.SerializeToString() == data
    return message


# ---- units ----------------------------------------------------------------------------------------


def test_serializer_passes_encoded_replies_through():
    image = images_pb2.Image(name="images/1", path="/a.fits", noise_jy=0.5)
    serialize = serializer(images_pb2.Image)
    assert serialize(image) == image.SerializeToString()
    data = image.SerializeToString()
    assert serialize(Encoded(images_pb2.Image, data)) is data
    assert Encoded(images_pb2.Image, data).message() == image
    with pytest.raises(TypeError, match="Image is expected"):
        serialize(Encoded(images_pb2.ListImagesResponse, data))


@pytest.mark.parametrize("token", ["", "abc", "t" * 300])
@pytest.mark.parametrize("total", [0, 1, 300, 2**31 - 1])
@pytest.mark.parametrize("count", [0, 1, 3])
def test_page_is_the_serialized_message(token: str, total: int, count: int):
    images = [images_pb2.Image(name=f"images/{i}", path=f"/x/{i}.fits", size_x_px=i) for i in range(count)]
    framed = [images_pb2.ListImagesResponse(images=[i]).SerializeToString() for i in images]
    expected = images_pb2.ListImagesResponse(images=images, next_page_token=token, total_size=total)
    assert page(images_pb2.ListImagesResponse, framed, token, total).data == expected.SerializeToString()
    with pytest.raises(TypeError):
        page(images_pb2.BatchGetImagesResponse, framed, token, total)


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, 1e-300, -2.25, float("inf")])
def test_scalar_fields_match_proto3(value: float):
    assert double_field(2, value) == images_pb2.ImageMatch(separation_deg=value).SerializeToString()
    for text in ("", "abc", "t" * 200):
        assert string_field(2, text) == sources_pb2.ListSourcesResponse(next_page_token=text).SerializeToString()
    for n in (0, 1, 127, 128, 300, 2**31 - 1):
        assert uint_field(3, n) == sources_pb2.ListSourcesResponse(total_size=n).SerializeToString()


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 70000])
def test_unframe_undoes_field_bytes(size: int):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert unframe(field_bytes(1, payload)) == payload


async def test_get_image_reply_is_the_message(stubs):
    [img] = await make_images(stubs, [60310.0], "get-enc")
    data = await raw(stubs.channel, IMAGES + "GetImage", images_pb2.GetImageRequest(name=img.name))
    message = images_pb2.Image.FromString(data)
    assert message == img and data == message.SerializeToString()
    assert data == await raw(stubs.channel, IMAGES + "GetImage", images_pb2.GetImageRequest(name=img.name))


def test_every_method_must_be_implemented():
    service = images_pb2.DESCRIPTOR.services_by_name["ImageService"]
    with pytest.raises(TypeError, match="GetImage"):
        method_handlers(service, object())


# ---- over the wire --------------------------------------------------------------------------------


async def test_list_search_and_batch_replies_are_the_messages(stubs):
    images = await make_images(stubs, [60300.0, 60300.1, 60300.2], "enc")
    for i, img in enumerate(images):
        await record(
            stubs,
            img.name,
            [measurement("ENC0", 128.7, 55.57, flux=0.1 + i), measurement(f"ENC{i + 1}", 128.8, 55.6 + i / 100)],
        )
    ch = stubs.channel

    async def get_image(name: str) -> images_pb2.Image:
        return await stubs.images.GetImage(images_pb2.GetImageRequest(name=name))

    async def get_source(name: str) -> sources_pb2.Source:
        return await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name=name))

    token, pages = "", []
    while True:
        data = await raw(ch, IMAGES + "ListImages", images_pb2.ListImagesRequest(page_size=2, page_token=token))
        reply = canonical(images_pb2.ListImagesResponse, data)
        expected = images_pb2.ListImagesResponse(
            images=[await get_image(i.name) for i in reply.images],
            next_page_token=reply.next_page_token,
            total_size=reply.total_size,
        )
        assert data == expected.SerializeToString()
        assert reply.total_size == 3
        pages.append(len(reply.images))
        token = reply.next_page_token
        if not token:
            break
    assert pages == [2, 1]

    names = [images[2].name, images[0].name, images[2].name]
    data = await raw(ch, IMAGES + "BatchGetImages", images_pb2.BatchGetImagesRequest(names=names))
    assert data == images_pb2.BatchGetImagesResponse(images=[await get_image(n) for n in names]).SerializeToString()

    data = await raw(ch, IMAGES + "SearchImages", images_pb2.SearchImagesRequest(ra_deg=128.7, dec_deg=55.57))
    found = canonical(images_pb2.SearchImagesResponse, data)
    assert len(found.matches) == 3 and found.total_size == 3
    for m in found.matches:
        assert m.image == await get_image(m.image.name)

    token, seen = "", []
    while True:
        data = await raw(ch, SOURCES + "ListSources", sources_pb2.ListSourcesRequest(page_size=3, page_token=token))
        listed = canonical(sources_pb2.ListSourcesResponse, data)
        expected_sources = sources_pb2.ListSourcesResponse(
            sources=[await get_source(s.name) for s in listed.sources],
            next_page_token=listed.next_page_token,
            total_size=listed.total_size,
        )
        assert data == expected_sources.SerializeToString() and listed.total_size == 4
        seen += [s.name for s in listed.sources]
        token = listed.next_page_token
        if not token:
            break
    assert sorted(seen) == [f"sources/ENC{i}" for i in range(4)]

    wanted = ["sources/ENC2", "sources/ENC0"]
    data = await raw(ch, SOURCES + "BatchGetSources", sources_pb2.BatchGetSourcesRequest(names=wanted))
    assert (
        data == sources_pb2.BatchGetSourcesResponse(sources=[await get_source(n) for n in wanted]).SerializeToString()
    )

    # Centred exactly on ENC0: its separation is 0.0, which proto3 leaves out of the bytes.
    enc0 = await get_source("sources/ENC0")
    request = sources_pb2.SearchSourcesRequest(ra_deg=enc0.ra_deg, dec_deg=enc0.dec_deg, radius_deg=0.5)
    data = await raw(ch, SOURCES + "SearchSources", request)
    cone = canonical(sources_pb2.SearchSourcesResponse, data)
    assert cone.matches[0].source == enc0 and cone.matches[0].separation_deg == 0.0
    assert [m.source.name for m in cone.matches] == ["sources/ENC0", "sources/ENC1", "sources/ENC2", "sources/ENC3"]
    for m in cone.matches[1:]:
        assert m.separation_deg > 0 and m.source == await get_source(m.source.name)


async def test_lightcurve_replies_are_the_messages_and_follow_writes(stubs):
    images = await make_images(stubs, [60400.0 + d for d in range(5)], "enc-lc")
    for i, img in enumerate(images[:4]):
        await record(stubs, img.name, [measurement("ENCLC", 150.0, 40.0, flux=0.1 + i / 10)])
    ch = stubs.channel
    request = sources_pb2.GetLightcurveRequest(name="sources/ENCLC", max_points_per_message=3)

    async def read() -> list[sources_pb2.GetLightcurveResponse]:
        data = await raw_stream(ch, SOURCES + "GetLightcurve", request)
        assert data == await raw_stream(ch, SOURCES + "GetLightcurve", request)  # the cached reply: same bytes
        messages = [canonical(sources_pb2.GetLightcurveResponse, d) for d in data]
        source = await stubs.sources.GetSource(sources_pb2.GetSourceRequest(name="sources/ENCLC"))
        assert messages[0].source == source
        assert not any(m.HasField("source") for m in messages[1:])
        return messages  # type: ignore[return-value]

    first = await read()
    assert [len(m.points) for m in first] == [3, 1]
    assert [p.image for m in first for p in m.points] == [i.name for i in images[:4]]

    # A new epoch is a commit: the kept lightcurve is not served again.
    await record(stubs, images[4].name, [measurement("ENCLC", 150.0, 40.0, flux=0.7)])
    second = await read()
    assert [len(m.points) for m in second] == [3, 2]
    assert second[-1].points[-1].image == images[4].name and second[-1].points[-1].peak_flux_jy == 0.7
    assert second[0].source.detection_count == 5

    # So does deleting an image with its photometry.
    await stubs.images.DeleteImage(images_pb2.DeleteImageRequest(name=images[1].name, force=True))
    third = await read()
    assert [p.image for m in third for p in m.points] == [images[i].name for i in (0, 2, 3, 4)]
    assert third[0].source.detection_count == 4

    # No points in range: one message with the source alone.
    request = sources_pb2.GetLightcurveRequest(name="sources/ENCLC", start_mjd=61000.0)
    [alone] = await read()
    assert not alone.points


async def reflected_pool(channel: grpc.aio.Channel, symbol: str) -> descriptor_pool.DescriptorPool:
    """The descriptors the server's reflection serves for `symbol` (with dependencies), as grpcurl sees them."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)]))
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        async for resp in call
        for raw in resp.file_descriptor_response.file_descriptor_proto
    ]
    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()
    while len(added) < len(files):  # dependencies first, in whatever order they came
        ready = [f for f in files if f.name not in added and set(f.dependency) <= added]
        assert ready, f"reflection left dependencies out: {[f.dependency for f in files]}"
        for f in ready:
            pool.Add(f)
            added.add(f.name)
    return pool


async def test_reflection_clients_decode_encoded_replies(stubs):
    """A client knowing only what reflection serves (grpcurl) reads the same messages from the sent bytes."""
    images = await make_images(stubs, [60500.0, 60500.5], "enc-refl")
    await record(stubs, images[0].name, [measurement("ENCR", 10.0, 20.0)])
    ch = stubs.channel
    pools = {
        IMAGES: await reflected_pool(ch, "dsa110.contimg.v1.ImageService"),
        SOURCES: await reflected_pool(ch, "dsa110.contimg.v1.SourceService"),
    }

    def reflected(service: str, cls: type[Message]) -> type[Message]:
        return message_factory.GetMessageClass(pools[service].FindMessageTypeByName(cls.DESCRIPTOR.full_name))

    calls: list[tuple[str, str, Message, type[Message]]] = [
        (IMAGES, "ListImages", images_pb2.ListImagesRequest(page_size=1), images_pb2.ListImagesResponse),
        (
            IMAGES,
            "SearchImages",
            images_pb2.SearchImagesRequest(ra_deg=128.7, dec_deg=55.57),
            images_pb2.SearchImagesResponse,
        ),
        (
            SOURCES,
            "SearchSources",
            sources_pb2.SearchSourcesRequest(ra_deg=10.0, dec_deg=20.1, radius_deg=1.0),
            sources_pb2.SearchSourcesResponse,
        ),
    ]
    for service, method, request, cls in calls:
        data = await raw(ch, service + method, request)
        decoded = reflected(service, cls).FromString(data)
        assert decoded.ListFields(), method
        assert decoded.SerializeToString() == data == cls.FromString(data).SerializeToString()
    [data] = await raw_stream(ch, SOURCES + "GetLightcurve", sources_pb2.GetLightcurveRequest(name="sources/ENCR"))
    curve: Any = reflected(SOURCES, sources_pb2.GetLightcurveResponse).FromString(data)
    assert curve.source.name == "sources/ENCR" and [p.image for p in curve.points] == [images[0].name]


async def test_encoded_methods_fail_with_rich_status(stubs):
    await expect_error(
        stubs.images.ListImages(images_pb2.ListImagesRequest(filter="no_such_field = 1")), INVALID, "INVALID_FILTER"
    )
    await expect_error(
        stubs.images.ListImages(images_pb2.ListImagesRequest(page_token="garbage")), INVALID, "INVALID_PAGE_TOKEN"
    )
    err = await expect_error(
        stubs.images.BatchGetImages(images_pb2.BatchGetImagesRequest(names=["images/999999"])),
        NOT_FOUND,
        "IMAGE_NOT_FOUND",
    )
    assert err.metadata["resource"] == "images/999999"
    await expect_error(
        stubs.images.SearchImages(images_pb2.SearchImagesRequest(ra_deg=0.0, dec_deg=91.0)),
        INVALID,
        "INVALID_ARGUMENT",
        "dec_deg",
    )
    await expect_error(
        stubs.sources.SearchSources(sources_pb2.SearchSourcesRequest(ra_deg=10.0, dec_deg=10.0, radius_deg=0.0)),
        INVALID,
        "INVALID_ARGUMENT",
        "radius_deg",
    )
    await expect_error(
        stubs.sources.BatchGetSources(sources_pb2.BatchGetSourcesRequest(names=["sources/NOPE"])),
        NOT_FOUND,
        "SOURCE_NOT_FOUND",
    )

    async def lightcurve(**kwargs: object) -> list[sources_pb2.GetLightcurveResponse]:
        request = sources_pb2.GetLightcurveRequest(**kwargs)  # type: ignore[arg-type]
        return [m async for m in stubs.sources.GetLightcurve(request)]

    await expect_error(lightcurve(name="sources/NOPE"), NOT_FOUND, "SOURCE_NOT_FOUND")
    await expect_error(lightcurve(name="sources/X", start_mjd=2.0, end_mjd=1.0), INVALID, "INVALID_ARGUMENT", "end_mjd")
