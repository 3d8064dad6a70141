"""A replica far from the database never reuses a reply that a write through another replica, already
returned, has made stale (storage/postgres/changes.py: `barrier`).

Replica A reaches PostgreSQL through a proxy that delays every byte from the database by 80 ms (a
replica in another building), replica B directly. B's commit notification therefore reaches A
~80 ms after B has answered its caller. Before the barrier, A answered the next read from the reply
it had kept and showed the old value; now A first makes a round trip on its listening session,
whose answer PostgreSQL sends only after the notifications it was signalled for, so the write shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit, urlunsplit

import grpc
from dsa110.contimg.v1 import images_pb2, sources_pb2

from conftest import RunningServer, ServerFactory, make_stubs
from helpers_jobs import make_image, make_ms, measurement, record

ENGINES = ("postgres",)
DELAY_S = 0.08
ROUNDS = 8


class DelayingProxy:
    """A TCP proxy that hands on the server's bytes `delay_s` after they came, in order."""

    def __init__(self, host: str, port: int, delay_s: float) -> None:
        self.host, self.port, self.delay_s = host, port, delay_s
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        server_reader, server_writer = await asyncio.open_connection(self.host, self.port)
        late: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def upstream() -> None:
            while data := await client_reader.read(65536):
                server_writer.write(data)
                await server_writer.drain()

        async def downstream() -> None:
            while data := await server_reader.read(65536):
                late.put_nowait((time.monotonic() + self.delay_s, data))
            late.put_nowait((0.0, b""))

        async def deliver() -> None:
            while True:
                due, data = await late.get()
                if not data:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                client_writer.write(data)
                await client_writer.drain()

        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await asyncio.gather(upstream(), downstream(), deliver())
        for writer in (client_writer, server_writer):
            writer.transport.abort()


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def test_a_far_replica_shows_a_write_returned_by_another(server_factory: ServerFactory) -> None:
    shown, far = await _far_replica_rounds(server_factory, read_barrier=True)
    assert shown == [(0.0, 0.0, 0)] * ROUNDS, "a far replica showed what a returned write replaced"
    listener = far.server.storage.db.changes  # type: ignore[attr-defined]
    assert listener.round_trips >= ROUNDS * 3  # every kept reply was confirmed first
    assert far.server.storage.read_cache.hits >= ROUNDS * 3


async def test_without_the_barrier_the_far_replica_shows_replaced_values(server_factory: ServerFactory) -> None:
    """`--no-read-barrier` does what the README says it does: kept replies are reused until the
    notification arrives, here 80 ms after the writer's answer."""
    shown, far = await _far_replica_rounds(server_factory, read_barrier=False)
    assert shown != [(0.0, 0.0, 0)] * ROUNDS
    assert far.server.storage.db.changes.round_trips == 0  # type: ignore[attr-defined]


async def _far_replica_rounds(
    server_factory: ServerFactory, read_barrier: bool
) -> tuple[list[tuple[float, float, int]], RunningServer]:
    """Per round: what the far replica shows just after writes through the near one, as differences
    from what was written (all zero: nothing stale)."""
    near = await server_factory()
    url = urlsplit(near.config.database)
    proxy = DelayingProxy(url.hostname or "127.0.0.1", url.port or 5432, DELAY_S)
    far = await server_factory(database=_through(near.config.database, await proxy.start()), read_barrier=read_barrier)
    try:
        async with grpc.aio.insecure_channel(near.target) as ch_n, grpc.aio.insecure_channel(far.target) as ch_f:
            writer, reader = make_stubs(ch_n), make_stubs(ch_f)
            ms = await make_ms(writer, "/data/ms/far.ms", mid_mjd=60200.0)
            image = await make_image(writer, ms.name, "/data/images/far.fits", 60200.0)
            await record(writer, image.name, [measurement("FAR1", 200.0, 30.0)])
            get = images_pb2.GetImageRequest(name=image.name)
            listed = images_pb2.ListImagesRequest(page_size=10)
            cone = sources_pb2.SearchSourcesRequest(ra_deg=200.0, dec_deg=30.0, radius_deg=1.0)
            shown: list[tuple[float, float, int]] = []
            for n in range(ROUNDS):
                for _ in range(2):  # the second is a kept reply
                    await reader.images.GetImage(get)
                    await reader.images.ListImages(listed)
                    await reader.sources.SearchSources(cone)
                noise = 0.001 * (n + 1)
                await writer.images.UpdateImage(
                    images_pb2.UpdateImageRequest(
                        image=images_pb2.Image(name=image.name, noise_jy=noise), update_mask={"paths": ["noise_jy"]}
                    )
                )
                second = await make_image(writer, ms.name, f"/data/images/far-{n}.fits", 60200.0 + n / 100)
                await record(writer, second.name, [measurement("FAR1", 200.0, 30.0)])
                got = (await reader.images.GetImage(get)).noise_jy
                total = (await reader.images.ListImages(listed)).total_size
                [match] = (await reader.sources.SearchSources(cone)).matches
                shown.append((got - noise, float(total - (n + 2)), match.source.detection_count - (n + 2)))
    finally:
        await proxy.stop()
    return shown, far
