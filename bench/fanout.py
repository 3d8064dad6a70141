"""WatchJob's fan-out inside the server: one published event to N watchers, no gRPC.

    python bench/fanout.py [--watchers 1000] [--events 20]

Runs N WatchJob handlers (servicer, watcher and event bus as the server wires them; the job lookup
answered from memory) and times each published event until every handler has yielded it. This is
the part of bench/run.py's WatchJob latency that is this project's code; the rest is gRPC sending
the messages and the load generator receiving them.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from dsa110.contimg.server.domain.records import Job, JobEvent, JobEventType
from dsa110.contimg.server.events.local import LocalEventBus
from dsa110.contimg.server.events.watch import JobWatcher
from dsa110.contimg.server.servicers.jobs import JobServicer
from dsa110.contimg.v1 import jobs_pb2


class _Jobs:
    async def get(self, job_id: str, *, with_transitions: bool = True) -> Job:
        return Job(id=job_id)


class _Context:
    def invocation_metadata(self) -> tuple[()]:
        return ()


async def fan_out(watchers: int, events: int) -> list[float]:
    bus = LocalEventBus()
    servicer = JobServicer(None, None, JobWatcher(_Jobs(), bus))  # type: ignore[arg-type]
    request = jobs_pb2.WatchJobRequest(name="jobs/bench")
    received: list[float] = []
    subscribed = 0
    all_subscribed = asyncio.Event()
    all_received = asyncio.Event()
    expected = 0

    async def watch() -> None:
        nonlocal subscribed
        async for event in servicer.WatchJob(request, _Context()):  # type: ignore[arg-type]
            if event.type == jobs_pb2.JobEvent.TYPE_SNAPSHOT:
                subscribed += 1
                if subscribed == watchers:
                    all_subscribed.set()
            else:
                received.append(time.perf_counter())
                if len(received) == expected:
                    all_received.set()

    tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
    await all_subscribed.wait()
    times = []
    for sequence in range(1, events + 1):
        before = len(received)
        expected = before + watchers
        all_received.clear()
        start = time.perf_counter()
        bus.publish(JobEvent(sequence=sequence, type=JobEventType.PROGRESS, job=Job(id="bench")))
        await all_received.wait()
        times.append((max(received[before:]) - start) * 1000)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--watchers", type=int, default=1000)
    p.add_argument("--events", type=int, default=20)
    args = p.parse_args()
    times = asyncio.run(fan_out(args.watchers, args.events))
    print(
        f"one event to {args.watchers} WatchJob handlers: median {statistics.median(times):.1f} ms, "
        f"min {min(times):.1f} ms over {args.events} events"
    )


if __name__ == "__main__":
    main()
