"""A pipeline worker: claim a job, heartbeat while working on it, succeed or fail it, repeat.

    python clients/examples/job_worker.py image photometry        # job types to take (default any)

Run as many as you like, on any hosts: a claim is atomic, so each job goes to one worker. A worker
that dies mid-job stops heartbeating; its lease expires, the server fails that attempt and (while
attempts remain) makes the job PENDING again for another worker, and anything the dead worker
still sends with its lease token is refused (LEASE_LOST). The stage here is a stand-in: it sleeps
`parameters.seconds` (or --work-s) and fails when `parameters.fail` is true.
Connection settings come from CONTIMG_TARGET, CONTIMG_TOKEN, ... (ClientConfig.from_env).
"""

from __future__ import annotations

import argparse
import json
import threading
from pathlib import Path

from dsa110.contimg.client import Client, ContimgError, FailedPreconditionError
from dsa110.contimg.v1.jobs_pb2 import Job


class Heartbeat(threading.Thread):
    """Renews a job's lease every third of its length until stopped. `lost` is set once the
    server says the lease is no longer ours (it expired and the job went to another worker)."""

    def __init__(self, client: Client, job: str, lease_token: str, lease_s: float) -> None:
        super().__init__(name=f"heartbeat {job}", daemon=True)
        self.client, self.job, self.lease_token, self.interval_s = client, job, lease_token, lease_s / 3
        self.stopped, self.lost = threading.Event(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.client.heartbeat_job(self.job, self.lease_token)
            except FailedPreconditionError:  # LEASE_LOST: stop working on it
                self.lost.set()
                return
            except ContimgError:  # e.g. UNAVAILABLE: the next beat tries again while the lease lasts
                pass


def run_stage(job: Job, lost: threading.Event, work_s: float | None) -> list[str]:
    """The pipeline stage (a stand-in). Returns the artifacts; gives up early if the lease is lost."""
    parameters = dict(job.parameters.items())  # a Struct reads like a dict, without .get
    seconds = work_s if work_s is not None else float(str(parameters.get("seconds", 0.1)))
    if lost.wait(seconds):
        raise RuntimeError("lease lost")
    if parameters.get("fail"):
        raise RuntimeError("the stage failed (parameters.fail)")
    return [f"/stage/products/{job.name.removeprefix('jobs/')}.fits"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("types", nargs="*", choices=["convert", "calibrate", "image", "photometry", "pipeline"])
    parser.add_argument("--lease-s", type=float, default=30.0, help="lease length; a heartbeat every third of it")
    parser.add_argument("--wait-s", type=float, default=30.0, help="long-poll wait of each claim")
    parser.add_argument("--max-jobs", type=int, default=0, help="exit after this many jobs (0: never)")
    parser.add_argument("--exit-when-idle", action="store_true", help="exit when a claim's wait ends with no job")
    parser.add_argument("--work-s", type=float, default=None, help="the stand-in stage's length for every job")
    parser.add_argument("--lease-file", type=Path, help="keep the held job and lease token here while working")
    args = parser.parse_args()
    types = [Job.Type.Value(f"TYPE_{t.upper()}") for t in args.types]

    done = 0
    with Client() as client:  # ClientConfig.from_env(): CONTIMG_TARGET, CONTIMG_TOKEN, ...
        while not args.max_jobs or done < args.max_jobs:
            claim = client.claim_job(types, lease_duration_s=args.lease_s, wait_s=args.wait_s)
            if not claim.HasField("job"):
                if args.exit_when_idle:
                    break
                continue
            job, token = claim.job, claim.lease_token
            if args.lease_file:
                args.lease_file.write_text(json.dumps({"job": job.name, "lease_token": token}))
            print(f"claimed {job.name} attempt {job.attempt}", flush=True)
            heartbeat = Heartbeat(client, job.name, token, args.lease_s)
            heartbeat.start()
            try:
                artifacts = run_stage(job, heartbeat.lost, args.work_s)
                client.succeed_job(job.name, artifacts, lease_token=token)
                print(f"succeeded {job.name}", flush=True)
            except FailedPreconditionError as error:  # LEASE_LOST: another worker has the job now
                print(f"lost {job.name}: {error.reason}", flush=True)
            except Exception as error:
                try:
                    client.fail_job(job.name, f"{type(error).__name__}: {error}", lease_token=token)
                    print(f"failed {job.name}: {error}", flush=True)
                except FailedPreconditionError as lost:
                    print(f"lost {job.name}: {lost.reason}", flush=True)
            finally:
                heartbeat.stopped.set()
                heartbeat.join()
                if args.lease_file:
                    args.lease_file.unlink(missing_ok=True)
            done += 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
