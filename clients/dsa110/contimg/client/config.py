"""Connection settings shared by the synchronous and asynchronous clients."""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from dsa110.contimg.v1 import images_pb2, jobs_pb2, measurement_sets_pb2, sources_pb2

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_DEADLINE_S = 30.0
MIB = 1024 * 1024

# Method-name prefixes of RPCs that never change server state, hence are always safe to retry.
_READ_PREFIXES = ("Get", "BatchGet", "List", "Search", "Watch")
_SERVICE_MODULES = (images_pb2, measurement_sets_pb2, sources_pb2, jobs_pb2)


class Unset(enum.Enum):
    """Marks an argument that was not given, where None is a meaningful value."""

    UNSET = enum.auto()


UNSET = Unset.UNSET


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A gRPC retry policy: retried on UNAVAILABLE only, with exponential backoff."""

    max_attempts: int = 4  # 1: no retries
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    backoff_multiplier: float = 2.0

    def __post_init__(self) -> None:
        # gRPC rejects a service config it cannot parse only when the channel is made, and then
        # fails every call: refuse such values here instead.
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name, least in (("initial_backoff_s", 0.001), ("max_backoff_s", 0.001), ("backoff_multiplier", 0.0)):
            value = getattr(self, name)
            # gRPC counts backoffs in whole milliseconds and refuses 0.
            if not (math.isfinite(value) and value > 0 and value >= least):
                raise ValueError(f"{name} must be a finite number of at least {least or 'above 0'}, got {value}")
        if self.max_backoff_s < self.initial_backoff_s:
            raise ValueError("max_backoff_s must not be less than initial_backoff_s")

    def to_json(self) -> dict[str, Any] | None:
        """The policy as gRPC's service config reads it; None for a single attempt (no policy)."""
        if self.max_attempts == 1:
            return None
        return {
            "maxAttempts": self.max_attempts,
            "initialBackoff": _duration(self.initial_backoff_s),
            "maxBackoff": _duration(self.max_backoff_s),
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }


def _duration(seconds: float) -> str:
    """A google.protobuf.Duration in JSON: decimal seconds (never `1e-05s`), at most 9 fractional digits."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Everything needed to open a channel to a contimg server.

    TLS is used when `tls` is true or any TLS path is given; without `tls_ca` the system roots
    are trusted. `deadline_s` applies to every unary call (all retry attempts together) and to
    the lightcurve stream; job watchers have no deadline since they are meant to run for hours.
    """

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: bool = False
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    deadline_s: float | None = DEFAULT_DEADLINE_S
    # Defaults match the server's keepalive enforcement: pinging more often than the server
    # allows gets the connection closed with ENHANCE_YOUR_CALM.
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    keepalive_permit_without_calls: bool = True
    max_send_message_bytes: int = 64 * MIB
    max_receive_message_bytes: int = 64 * MIB
    read_retry: RetryPolicy = RetryPolicy()
    # Writes are retried only because the client stamps each one with a request_id the server
    # deduplicates on; a separate entry lets them be tuned (or disabled) independently of reads.
    write_retry: RetryPolicy | None = RetryPolicy()
    # Watchers reconnect after UNAVAILABLE with this backoff, and give up when the server has
    # been unreachable for `watch_give_up_s` in a row (None: never).
    watch_backoff_initial_s: float = 0.1
    watch_backoff_max_s: float = 5.0
    watch_give_up_s: float | None = 300.0
    user_agent: str = "contimg-client/0.1"

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        if self.deadline_s is not None and not (math.isfinite(self.deadline_s) and self.deadline_s > 0):
            raise ValueError(f"deadline_s must be a positive finite number (None: no deadline), got {self.deadline_s}")
        if not self.target:
            raise ValueError("target must not be empty")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ClientConfig:
        """Reads CONTIMG_TARGET, CONTIMG_TOKEN, CONTIMG_TLS_CA, CONTIMG_TLS_CERT, CONTIMG_TLS_KEY
        and CONTIMG_DEADLINE (seconds; 0 or `none` for no deadline). Keyword overrides that are
        not None win over the environment."""
        env = os.environ if env is None else env

        def path(key: str) -> Path | None:
            value = env.get(key, "")
            return Path(value).expanduser() if value else None

        values: dict[str, Any] = {
            "target": env.get("CONTIMG_TARGET") or DEFAULT_TARGET,
            "token": env.get("CONTIMG_TOKEN") or None,
            "tls_ca": path("CONTIMG_TLS_CA"),
            "tls_cert": path("CONTIMG_TLS_CERT"),
            "tls_key": path("CONTIMG_TLS_KEY"),
        }
        deadline = env.get("CONTIMG_DEADLINE", "").strip()
        if deadline:
            values["deadline_s"] = parse_deadline(deadline)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def replace(self, **changes: Any) -> ClientConfig:
        return dataclasses.replace(self, **changes)

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.tls_ca is not None or self.tls_cert is not None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(p: Path | None) -> bytes | None:
            return p.read_bytes() if p is not None else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.tls_ca),
            private_key=read(self.tls_key),
            certificate_chain=read(self.tls_cert),
        )

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def service_config(self) -> dict[str, Any]:
        reads, writes = _methods_by_kind()
        configs: list[dict[str, Any]] = []
        for methods, policy in ((reads, self.read_retry), (writes, self.write_retry)):
            retry = policy.to_json() if policy is not None else None
            if retry is not None:
                configs.append({"name": methods, "retryPolicy": retry})
        return {"methodConfig": configs}

    def channel_options(self) -> list[tuple[str, str | int]]:
        return [
            ("grpc.enable_retries", 1),
            ("grpc.service_config", json.dumps(self.service_config())),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.keepalive_permit_without_calls)),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_send_message_length", self.max_send_message_bytes),
            ("grpc.max_receive_message_length", self.max_receive_message_bytes),
            # The default 256 KiB retry buffer would make a large photometry batch non-retryable.
            ("grpc.per_rpc_retry_buffer_size", self.max_send_message_bytes),
            ("grpc.primary_user_agent", self.user_agent),
            # gRPC's own reconnect backoff grows to 120 s by default, which would hold a watcher
            # back long after the server is up again.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", int(self.watch_backoff_max_s * 1000)),
        ]


def parse_deadline(text: str) -> float | None:
    if text.strip().lower() in ("0", "none", "inf", "infinity"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid deadline {text!r}: expected seconds") from None
    if not math.isfinite(value):  # nan, or 1e309 (a deadline that every call would miss)
        raise ValueError(f"invalid deadline {text!r}: expected a finite number of seconds, or 'none'")
    if value < 0:
        raise ValueError(f"invalid deadline {text!r}: must not be negative")
    return value or None


def _methods_by_kind() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Splits every RPC into reads and idempotent writes (those whose request has a request_id).

    Derived from the descriptors so that an RPC added to the contract is classified without
    touching the client. Writes without a request_id (the deletes) get no retry policy at all: a
    retried delete whose first attempt succeeded would report NOT_FOUND.
    """
    reads: list[dict[str, str]] = []
    writes: list[dict[str, str]] = []
    for module in _SERVICE_MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                entry = {"service": service.full_name, "method": method.name}
                if method.name.startswith(_READ_PREFIXES):
                    reads.append(entry)
                elif "request_id" in method.input_type.fields_by_name:
                    writes.append(entry)
    return reads, writes
