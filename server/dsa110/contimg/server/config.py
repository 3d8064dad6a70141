"""Every server option in one typed object, read from CLI flags and CONTIMG_* environment variables.

Precedence: command-line flag > environment variable > default. The README's configuration table
is this class.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (0.0.0.0 or [::] for all)"})
    port: int = field(default=50051, metadata={"help": "port to bind (0 picks a free one)"})
    data_dir: Path = field(default=Path("data"), metadata={"help": "directory of the SQLite database"})
    database: str = field(
        default="",
        metadata={"help": "SQLite file (default DATA_DIR/contimg.sqlite3), or a postgresql://user@host/db URL"},
    )
    readers: int = field(
        default=4,
        metadata={"help": "read-only SQLite connections in the pool (PostgreSQL: a pool of twice as many)"},
    )
    synchronous: str = field(
        default="FULL",
        metadata={
            "help": "SQLite synchronous mode: FULL (acknowledged writes survive power loss) or NORMAL "
            "(survive a process crash only)"
        },
    )
    write_process: bool = field(
        default=True,
        metadata={"help": "write photometry from a helper process beside the server (its own core and GIL)"},
    )
    read_cache_mb: int = field(
        default=256,
        metadata={"help": "memory for reused read replies and encoded rows, MiB (0: every read computed)"},
    )
    inline_reads: bool = field(
        default=True,
        metadata={"help": "try quick reads on the event loop (~1 ms budget) before the reader threads"},
    )
    statement_timeout_s: float = field(default=30.0, metadata={"help": "cap on one storage query, seconds"})
    q3c: bool = field(
        default=True,
        metadata={
            "help": "PostgreSQL: cone search through the q3c extension's sky index where the server has it "
            "(made at start); off: the GiST box index, no extension"
        },
    )
    read_barrier: bool = field(
        default=True,
        metadata={
            "help": "PostgreSQL: before reusing a kept reply, one round trip (shared by concurrent reads) so that "
            "every write returned through any replica shows; off: up to one notification delay stale"
        },
    )
    max_message_mb: int = field(
        default=32,
        metadata={"help": "max message size, MiB: RecordPhotometry's 100,000 measurements are ~17 MiB"},
    )
    max_concurrent_reads: int = field(
        default=256,
        metadata={"help": "reads in progress (reply not yet taken by the client included) before RESOURCE_EXHAUSTED"},
    )
    max_concurrent_writes: int = field(
        default=1000, metadata={"help": "writes in progress, kept apart from reads' (authorized callers only)"}
    )
    max_watch_streams: int = field(default=1000, metadata={"help": "open WatchJob/WatchJobs streams in all"})
    max_watch_streams_per_caller: int = field(
        default=100, metadata={"help": "open watch streams per caller (its token, or its IP address)"}
    )
    max_streams_per_connection: int = field(
        default=1000,
        metadata={"help": "concurrent HTTP/2 streams one connection may open (SETTINGS_MAX_CONCURRENT_STREAMS)"},
    )
    max_connections: int = field(
        default=4096,
        metadata={
            "help": "client connections open at once, per process; more are closed as they arrive (the "
            "open-files limit is raised to fit)"
        },
    )
    keepalive_time_s: int = field(default=30, metadata={"help": "server keepalive ping interval, seconds"})
    keepalive_timeout_s: int = field(default=10, metadata={"help": "keepalive ping ack timeout, seconds"})
    grace_s: float = field(default=10.0, metadata={"help": "shutdown grace for in-flight RPCs, seconds"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_rpcs: bool = field(default=True, metadata={"help": "log one line per RPC"})
    log_format: str = field(default="text", metadata={"help": "text or json (one JSON object per line)"})
    metrics_port: int = field(
        default=0,
        metadata={"help": "serve Prometheus metrics at http://METRICS_HOST:PORT/metrics (0: off)"},
    )
    metrics_host: str = field(default="", metadata={"help": "address of the metrics endpoint (default: --host)"})
    otlp_endpoint: str = field(
        default="",
        metadata={
            "help": "send OpenTelemetry traces (a span per RPC, storage work as child spans) to this OTLP/gRPC "
            "collector, e.g. http://127.0.0.1:4317 (off if empty)"
        },
    )
    otlp_sample_ratio: float = field(
        default=1.0,
        metadata={
            "help": "share of traces recorded, 0 to 1, for calls that arrive without a sampled trace of their "
            "caller's (a caller's sampling decision is followed)"
        },
    )
    web_port: int = field(
        default=0,
        metadata={
            "help": "serve the same services to browsers, over gRPC-Web and the Connect protocol (binary or JSON), "
            "on this port (0: off; needs the `web` extra)"
        },
    )
    web_host: str = field(default="", metadata={"help": "address of the browser port (default: --host)"})
    web_cors_origin: str = field(
        default="",
        metadata={
            "help": "comma-separated origins whose pages may call the browser port, e.g. https://dash.example.org "
            "('*': any; empty: only pages served from the same origin; repeatable)",
            "list": True,
        },
    )
    web_idle_timeout_s: float = field(
        default=30.0,
        metadata={
            "help": "browser port: seconds a connection may sit idle, or take to send a request (headers and "
            "body), before it is closed"
        },
    )
    uvloop: bool = field(default=True, metadata={"help": "run on uvloop when installed"})
    write_tokens: str = field(
        default="", metadata={"help": "comma-separated bearer tokens allowed to write (repeatable)", "list": True}
    )
    read_tokens: str = field(
        default="", metadata={"help": "comma-separated bearer tokens allowed to read only (repeatable)", "list": True}
    )
    tokens_file: str = field(
        default="",
        metadata={
            "help": "file of tokens, one per line as 'write TOKEN', 'read TOKEN' or 'write NAME TOKEN' (NAME: the "
            "caller in the log and on what it writes); keeps them out of ps; reloaded on SIGHUP"
        },
    )
    require_read_token: bool = field(default=False, metadata={"help": "reads need a read or write token too"})
    allow_anonymous_writes: bool = field(
        default=False, metadata={"help": "accept writes without a token (local development only)"}
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS instead of plaintext"})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert"})
    tls_client_ca: str = field(default="", metadata={"help": "PEM CA bundle: require client certificates (mTLS)"})
    redis_url: str = field(default="", metadata={"help": "redis://host:port/db for cache and events (off if empty)"})
    workers: int = field(default=1, metadata={"help": "server processes sharing the port (SO_REUSEPORT)"})

    @property
    def postgres(self) -> bool:
        """Whether `database` names a PostgreSQL database (else it is a SQLite file)."""
        return self.database.startswith(("postgresql://", "postgres://"))

    @property
    def database_path(self) -> Path:
        return Path(self.database) if self.database else self.data_dir / "contimg.sqlite3"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


_CALLER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens a server accepts, and the caller name each named one logs as."""

    write: frozenset[str]
    read: frozenset[str]
    names: Mapping[str, str]  # token -> caller name ('write NAME TOKEN' lines)


def read_tokens(config: ServerConfig) -> Tokens:
    """The tokens of the flags/env and of the tokens file (read again at SIGHUP: app.py). File lines:
    'write TOKEN', 'read TOKEN', or with a caller name, 'write NAME TOKEN'; anything else is a
    ValueError naming the line."""
    write = {t.strip() for t in config.write_tokens.split(",") if t.strip()}
    read = {t.strip() for t in config.read_tokens.split(",") if t.strip()}
    names: dict[str, str] = {}
    if config.tokens_file:
        for number, line in enumerate(Path(config.tokens_file).read_text().splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) not in (2, 3) or words[0] not in ("write", "read"):
                raise ValueError(
                    f"{config.tokens_file}:{number}: expected 'write TOKEN', 'read TOKEN' or 'write NAME TOKEN'"
                )
            token = words[-1]
            if len(words) == 3:
                if not _CALLER_NAME.fullmatch(words[1]):
                    raise ValueError(f"{config.tokens_file}:{number}: a caller name is 1-64 of A-Z a-z 0-9 . _ -")
                names[token] = words[1]
            (write if words[0] == "write" else read).add(token)
    return Tokens(frozenset(write), frozenset(read), MappingProxyType(names))


def _convert(kind: Any, text: str) -> Any:
    if kind in (bool, "bool"):
        lowered = text.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"not a boolean: {text!r}")
        return lowered in ("1", "true", "yes", "on")
    if kind in (int, "int"):
        return int(text)
    if kind in (float, "float"):
        return float(text)
    if kind in (Path, "Path"):
        return Path(text)
    return text


def env_name(name: str) -> str:
    return "CONTIMG_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} [env {env_name(f.name)}; default {f.default}]"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.metadata.get("list"):  # given twice, both count (not the last one alone)
            parser.add_argument(flag, dest=f.name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def from_sources(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> ServerConfig:
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        raw: Any = getattr(args, f.name, None) if args is not None else None
        source = f"--{f.name.replace('_', '-')}"
        if raw is None and env_name(f.name) in env:
            raw, source = env[env_name(f.name)], env_name(f.name)
        if raw is None:
            continue
        if isinstance(raw, list):  # a repeatable flag, given once or more
            raw = ",".join(raw)
        try:
            values[f.name] = raw if isinstance(raw, bool) else _convert(f.type, str(raw))
        except ValueError as exc:
            raise SystemExit(f"invalid {source}: {exc}") from None
    config = ServerConfig(**values)
    if config.synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
        raise SystemExit("invalid synchronous mode: use FULL, NORMAL or EXTRA")
    if not all(0 <= port <= 65535 for port in (config.port, config.metrics_port, config.web_port)):
        raise SystemExit("invalid port")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise SystemExit("--tls-cert and --tls-key go together")
    if config.tls_client_ca and not config.tls_cert:
        raise SystemExit("--tls-client-ca needs --tls-cert and --tls-key")
    if config.log_format not in ("text", "json"):
        raise SystemExit("--log-format must be text or json")
    if not 0.0 <= config.otlp_sample_ratio <= 1.0:
        raise SystemExit("--otlp-sample-ratio must be between 0 and 1")
    if config.read_cache_mb < 0:
        raise SystemExit("--read-cache-mb must be 0 or more")
    if config.workers < 1 or config.readers < 1:
        raise SystemExit("workers and readers must be at least 1")
    if config.max_connections < 1:
        raise SystemExit("--max-connections must be at least 1")
    if config.web_idle_timeout_s <= 0:
        raise SystemExit("--web-idle-timeout-s must be more than 0")
    for origin in config.web_cors_origin.split(","):
        if origin.strip() and not ORIGIN.fullmatch(origin.strip().rstrip("/")):
            raise SystemExit(f"invalid --web-cors-origin {origin.strip()!r}: an origin is scheme://host[:port], or *")
    return config


# What a browser sends as Origin: no path, no query (a browser never matches one with a path).
ORIGIN = re.compile(r"\*|[a-z][a-z0-9+.-]*://[^/?#\s]+")
