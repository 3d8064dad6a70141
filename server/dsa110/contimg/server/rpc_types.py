"""Type aliases for grpc.aio objects whose stubs are generic."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

Ctx: TypeAlias = grpc.aio.ServicerContext[Any, Any]
