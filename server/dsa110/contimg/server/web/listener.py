"""The browser port: its socket, and hypercorn serving the gateway on this process's event loop.

The gRPC server gets a second, private listener (a Unix socket in a directory only this user can
enter) that the gateway's channel dials: no TLS to repeat, no TCP, and nobody else can use it to
get around --tls-client-ca. Under --workers the parent binds the browser port before forking and
every worker serves the inherited socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from ..accesslog import AccessLog
from ..domain.errors import StartupError
from ..servicers.admission import Admission

if TYPE_CHECKING:
    from connectrpc.errors import ConnectError

log = logging.getLogger("contimg.web")

LISTEN_BACKLOG = 1024
STOP_S = 5.0  # beyond hypercorn's own graceful timeout (1 s): then its task is cancelled
HYPERCORN_LOG = logging.getLogger("contimg.web.hypercorn")
HYPERCORN_LOG.setLevel(logging.WARNING)


class WebBindError(StartupError):
    """The browser port could not be bound."""


def bind(host: str, port: int) -> socket.socket:
    """The browser port's listening socket; fails now, before anything else is open, if taken."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise WebBindError(f"cannot serve browsers on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)  # --workers: each worker serves this socket
    return sock


def private_address() -> tuple[str, str]:
    """(grpc address of a fresh Unix socket only this user can reach, its directory)."""
    directory = tempfile.mkdtemp(prefix="contimg-web-")  # mode 0700
    return f"unix:{Path(directory) / 'grpc.sock'}", directory


@dataclass
class WebTls:
    cert: str
    key: str
    client_ca: str = ""


@dataclass
class WebServer:
    """hypercorn serving the gateway on `sock`, forwarding to the gRPC server at `target`."""

    sock: socket.socket
    target: str
    directory: str
    origins: tuple[str, ...]
    max_bytes: int
    tls: WebTls | None = None
    connections: int = 1  # to the gRPC server (gateway.Lanes: why more than one)
    idle_timeout_s: float = 30.0  # a connection idle, or a request still arriving (intake.py)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def start(
        self, services: Iterable[ServiceDescriptor], admission: Admission, access: AccessLog | None = None
    ) -> None:
        """`admission`: the gRPC server's, whose token check a write's body waits for here too;
        `access`: its access log and metrics, where calls refused before their body are recorded."""
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        from ..servicers.admission import OPEN_PREFIXES
        from ..servicers.handlers import READ_REQUEST_BYTES, request_limit
        from .cors import Cors
        from .departures import Departures
        from .gateway import Gateway, Lanes, from_status
        from .intake import RequestIntake

        options = [
            ("grpc.max_send_message_length", self.max_bytes),
            ("grpc.max_receive_message_length", self.max_bytes),
            ("grpc.use_local_subchannel_pool", 1),  # a connection of its own per channel
        ]
        self._channels = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(self.connections)]
        gateway = Gateway(Lanes(self._channels), services, self.max_bytes)

        def limit(path: str) -> int:  # a read's (Health's too: no token is asked for it), else a write's
            if path.startswith(OPEN_PREFIXES):
                return READ_REQUEST_BYTES
            return request_limit(path.rsplit("/", 1)[-1]) or self.max_bytes

        known = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}

        def refuse(path: str, token: str | None) -> ConnectError | None:
            refused = admission.refusal(path, token) if path in known else None  # else connect-python's 404
            return None if refused is None else from_status(refused)

        def refused(scope: Mapping[str, Any], error: ConnectError, began: float) -> None:
            record_refusal(access, scope, error.code.name, began)

        intake = RequestIntake(Departures(gateway), self.idle_timeout_s, limit, refuse, refused)
        app = Cors(intake, self.origins)
        config = Config()
        # hypercorn closes the socket it is given when it stops: give it its own descriptor of ours.
        bind = [f"fd://{os.dup(self.sock.fileno())}"]
        config.bind = bind
        config.accesslog = None  # the gRPC server logs every call once
        config.errorlog = HYPERCORN_LOG  # its own start line repeats ours and says "CTRL + C to quit"
        config.graceful_timeout = 1.0  # watch streams end with the bus before this (app.stop)
        config.keep_alive_timeout = self.idle_timeout_s  # idle, or a request's headers still arriving
        if self.tls is not None:
            config.certfile, config.keyfile = self.tls.cert, self.tls.key
            if self.tls.client_ca:
                config.ca_certs = self.tls.client_ca
                config.verify_mode = ssl.CERT_REQUIRED
            config.bind, config.insecure_bind = bind, []
        self._task = asyncio.create_task(
            serve(app, config, shutdown_trigger=self._stopping.wait, mode="asgi"),  # type: ignore[arg-type]
            name="web",
        )
        scheme = "https" if self.tls is not None else "http"
        log.info("serving browsers (gRPC-Web, Connect) on %s://%s:%d", scheme, *self.sock.getsockname()[:2])

    async def stop(self) -> None:
        """Never raises: a failure here must not keep the server from closing its storage and exiting
        (a socket closed twice once left the process hanging after SIGTERM)."""
        try:
            await self._stop()
        except Exception:
            log.exception("stopping the browser port failed")

    async def _stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            # hypercorn waits for its connections; one it has wedged (its HTTP/2 stream table, see
            # intake.py) would keep the server from exiting after SIGTERM. So: a bound, then cancel.
            task, self._task = self._task, None
            _, pending = await asyncio.wait({task}, timeout=STOP_S)
            if pending:
                log.warning("the browser port did not stop within %.0f s: cancelling its connections", STOP_S)
                task.cancel()
                await asyncio.wait({task}, timeout=STOP_S)
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.warning("the browser port stopped with an error: %s", task.exception())
        for channel in self._channels:
            await channel.close()
        self._channels = []
        self.discard()

    def discard(self) -> None:
        """The socket and the private directory (all a server that never started holds)."""
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


RECORDED_HEADERS = (b"authorization", b"x-request-id")


def record_refusal(access: AccessLog | None, scope: Mapping[str, Any], code: str, began: float) -> None:
    """A call the browser port refused before its body (the gRPC server never saw it), as the
    server's own calls are recorded: one access-log line, and the metrics' started and handled
    (neither, as for every call, with --no-log-rpcs and no metrics port)."""
    if access is None:
        return
    client = (scope.get("client") or ("?", 0))[0]
    metadata = [(k.decode(), v.decode("latin-1")) for k, v in scope["headers"] if k in RECORDED_HEADERS]
    access.record(scope["path"], code, f"web:{client}", began, metadata)
