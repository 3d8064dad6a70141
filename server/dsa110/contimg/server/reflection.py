"""Server reflection under both protocol versions: grpc.reflection.v1 and grpc.reflection.v1alpha.

grpcio-reflection (1.85) implements only v1alpha, which is deprecated; newer clients (grpcurl,
grpc_cli, Postman) ask for v1 first. The two protocols exchange the same messages, field for field,
in another package, so the v1alpha servicer answers v1 calls too, registered under v1's method path.
The v1 file's descriptor (v1alpha's, renamed) goes into the pool as well, so that the v1 service is
listed and can be described like any other.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

# ErrorReason's file is imported by no service's file, so nothing else puts it in the default pool,
# and `grpcurl describe dsa110.contimg.v1.ErrorReason` found nothing.
from dsa110.contimg.v1 import common_pb2  # noqa: F401
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection as v1alpha
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
_METHOD = "ServerReflectionInfo"


def v1_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """grpc/reflection/v1/reflection.proto, made from v1alpha's file: the same messages and service
    in package grpc.reflection.v1 (the options, v1alpha's `deprecated` among them, are dropped)."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    old, new = f".{file.package}.", f".{V1_PACKAGE}."

    def renamed(type_name: str) -> str:
        return new + type_name[len(old) :] if type_name.startswith(old) else type_name

    file.name, file.package = V1_FILE, V1_PACKAGE
    file.ClearField("options")
    for message in file.message_type:  # the reflection messages have no nested types
        for field in message.field:
            if field.HasField("type_name"):  # only message and enum fields have one
                field.type_name = renamed(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return file


def _register_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)  # already there: another server in this process, or a library
    except KeyError:
        pool.AddSerializedFile(v1_file_descriptor().SerializeToString())


def enable_server_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Reflection of `service_names` and of itself, served as v1alpha and as v1."""
    _register_v1_file(descriptor_pool.Default())
    names = (*service_names, v1alpha.SERVICE_NAME, V1_SERVICE_NAME)
    servicer = v1alpha.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(V1_SERVICE_NAME, {_METHOD: handler}),))
