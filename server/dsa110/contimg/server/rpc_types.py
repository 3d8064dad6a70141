"""Type aliases for grpc.aio objects whose stubs are generic, and how a call's status code is named."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def status_name(code: object) -> str:
    """A call's status code (context.code()) as its name; "OK" when none was set (the handler returned)."""
    if isinstance(code, grpc.StatusCode):
        return code.name
    if isinstance(code, int):
        return next((s.name for s in grpc.StatusCode if s.value[0] == code), str(code))
    return "OK"
