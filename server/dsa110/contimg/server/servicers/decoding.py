"""Requests whose bytes do not decode get INVALID_ARGUMENT, not gRPC's UNKNOWN ("Unexpected DecodeError").

Truncated or corrupt messages, invalid UTF-8 in a string field and nesting deeper than the protobuf
decoder allows can all be sent by a client that does not use a protobuf library to encode. gRPC
Python treats a failing deserializer like a crashing handler; here the deserializer returns a
marker instead, and the `unary`/`streaming` wrappers (servicers/errors.py) abort with a proper rich
status. (This was an interceptor; a per-call interceptor costs ~7 us of every RPC, the check ~0.1.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError


class _Undecodable:
    __slots__ = ()


UNDECODABLE: Any = _Undecodable()


def lenient(strict: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`strict`, except that bytes it cannot decode become UNDECODABLE instead of an exception."""

    def deserialize(data: bytes) -> Any:
        try:
            return strict(data)
        except DecodeError:
            return UNDECODABLE

    return deserialize
