"""Server reflection over a real channel, as grpcurl uses it: the v1 protocol beside v1alpha, and
every type of the contract describable, ErrorReason (whose file no service imports) included.

grpcio-reflection ships messages for v1alpha only; v1's are the same on the wire, so v1 is called
with them under v1's method path.
"""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

ENGINES = ("sqlite", "postgres")

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse
PATHS = {
    "v1": "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "v1alpha": "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
}


async def ask(channel: grpc.aio.Channel, version: str, request: Request) -> Response:
    call = channel.stream_stream(
        PATHS[version], request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
    )
    [response] = [r async for r in call(iter([request]), timeout=10)]
    return response  # type: ignore[no-any-return]


def files(response: Response) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    assert response.WhichOneof("message_response") == "file_descriptor_response", response.error_response
    out = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        out[file.name] = file
    return out


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_describes_services_and_error_reason(stubs, version: str) -> None:
    channel = stubs.channel
    listed = await ask(channel, version, Request(list_services=""))
    names = {s.name for s in listed.list_services_response.service}
    assert {
        "dsa110.contimg.v1.ImageService",
        "dsa110.contimg.v1.SourceService",
        "dsa110.contimg.v1.JobService",
        "dsa110.contimg.v1.MSService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names

    images = files(await ask(channel, version, Request(file_containing_symbol="dsa110.contimg.v1.ImageService")))
    main = images["dsa110/contimg/v1/images.proto"]
    assert main.package == "dsa110.contimg.v1"
    assert [s.name for s in main.service] == ["ImageService"]
    assert "GetImage" in {m.name for m in main.service[0].method}
    assert set(main.dependency) <= set(images), "dependencies must come along"

    common = files(await ask(channel, version, Request(file_containing_symbol="dsa110.contimg.v1.ErrorReason")))
    [reasons] = [e for e in common["dsa110/contimg/v1/common.proto"].enum_type if e.name == "ErrorReason"]
    assert "INVALID_FILTER" in {v.name.removeprefix("ERROR_REASON_") for v in reasons.value}

    # The v1 service describes itself, with its own package's types.
    own = files(await ask(channel, version, Request(file_containing_symbol="grpc.reflection.v1.ServerReflection")))
    [v1] = own.values()
    assert v1.package == "grpc.reflection.v1"
    [method] = v1.service[0].method
    assert (method.input_type, method.output_type) == (
        ".grpc.reflection.v1.ServerReflectionRequest",
        ".grpc.reflection.v1.ServerReflectionResponse",
    )


async def test_unknown_symbol_is_not_found_over_v1(stubs) -> None:
    response = await ask(stubs.channel, "v1", Request(file_containing_symbol="dsa110.contimg.v1.NoSuchThing"))
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
    assert response.original_request.file_containing_symbol == "dsa110.contimg.v1.NoSuchThing"


def test_the_server_alone_registers_error_reason() -> None:
    """In a fresh interpreter (no test module imported common_pb2): the server module itself puts
    common.proto in the pool reflection reads."""
    code = (
        "import dsa110.contimg.server.app\n"
        "from google.protobuf import descriptor_pool\n"
        "descriptor_pool.Default().FindFileContainingSymbol('dsa110.contimg.v1.ErrorReason')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
