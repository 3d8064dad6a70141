"""Jobs, their events and log lines: one pipeline job per recent scan plus a few re-runs.

Every state shows up: a calibration waiting for its calibrator, runs at every stage, runs that
succeeded (some after a retry), runs that failed once or used all their attempts, and re-runs on
finished scans that were cancelled, succeeded, or failed three times.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from dsa110.contimg.server.domain.jobs import Action
from dsa110.contimg.server.domain.records import Job, JobStage, JobType, MSStage, MSStatus

from .job_history import JobHistory
from .scans import Scan
from .survey import CAL_NAME, IMAGING, PHOT_RADIUS_DEG, SCAN_S

MAX_JOB_MS = 200  # the newest measurement sets get a job each
EXTRA_JOB_EVERY = 12  # one re-run per this many finished scans among them

_STAGE_PROGRESS = {
    JobStage.CONVERTING: 5.0,
    JobStage.CONVERTED: 15.0,
    JobStage.FLAGGING_RFI: 25.0,
    JobStage.SOLVING_CAL: 40.0,
    JobStage.APPLYING_CAL: 55.0,
    JobStage.IMAGING: 65.0,
    JobStage.PHOTOMETRY: 85.0,
}
# How many steps of the pipeline path (_pipeline_path) a run on a measurement set at this stage took.
_STEPS_REACHED = {
    MSStage.CONVERTED: 2,
    MSStage.FLAGGED: 4,
    MSStage.CALIBRATION_SOLVED: 5,
    MSStage.CALIBRATED: 6,
    MSStage.IMAGED: 7,
    MSStage.PHOTOMETRY_DONE: 7,
}
_ERRORS = (
    "wsclean exited with status 137 (killed: out of memory)",
    "casacore: cannot lock table {ms}/SPECTRAL_WINDOW: lock held by another process",
    "calibration: bandpass solutions flagged for 61 % of antennas",
    "conversion: subband sb07 missing for group {group} after 600 s",
    "aoflagger: more than 80 % of visibilities flagged",
    "NFS timeout writing {ms}/table.f1",
)
_HOSTS = ("lxd110h17", "lxd110h18", "lxd110h19", "lxd110h21", "lxd110h23")

_PathStep = tuple[JobStage, int]  # a stage and the time (µs) the run reached it


@dataclass(slots=True)
class JobTables:
    jobs: list[Job]
    events: list[tuple[object, ...]]  # in time order, as the server would have appended them
    logs: list[tuple[object, ...]]  # (job_id, line_number, time, text)


def simulate_jobs(rng: random.Random, scans: list[Scan], photometry_count: list[int]) -> JobTables:
    """The newest scans' jobs; the first finished one (and ~8 % of the others) needed a retry."""
    histories: list[JobHistory] = []
    first_success = True
    done_seen = 0
    for scan in scans[-MAX_JOB_MS:]:
        finished = scan.kind == "photometry"
        measured = photometry_count[scan.index]
        histories.append(
            _pipeline_job(rng, scan, measured, retried=finished and (first_success or rng.random() < 0.08))
        )
        if finished:
            first_success = False
            if done_seen % EXTRA_JOB_EVERY == 0:
                histories.append(_extra_job(rng, scan, done_seen // EXTRA_JOB_EVERY, measured))
            done_seen += 1
    # events of all jobs merged in time order (ties: job order, then each job's own order)
    ordered = sorted(
        ((t, n, k, row) for n, h in enumerate(histories) for k, (t, row) in enumerate(h.events)),
        key=lambda e: (e[0], e[1], e[2]),
    )
    return JobTables(
        jobs=[h.job for h in histories],
        events=[row for *_, row in ordered],
        logs=[(h.job.id, n + 1, t, text) for h in histories for n, (t, text) in enumerate(h.logs)],
    )


def _job_id(scan: Scan) -> str:
    """The pipeline's run id, derived from the MS name: job-YYYY-MM-DD-HHMMSS."""
    return "job-" + scan.group_id.replace("T", "-").replace(":", "")


def _new_job(job_id: str, job_type: JobType, scan: Scan, params: dict[str, object], created: int) -> JobHistory:
    return JobHistory(
        Job(
            id=job_id,
            type=int(job_type),
            ms_path=scan.path,
            target_path=scan.path,
            parameters_json=json.dumps(params, separators=(",", ":"), sort_keys=True),
        ),
        created,
    )


def _pipeline_job(rng: random.Random, scan: Scan, measured: int, *, retried: bool) -> JobHistory:
    """The run that processed (or is processing) the scan, as far as the scan's stage says."""
    times = scan.times
    size, cell = IMAGING[scan.setup]
    params: dict[str, object] = {
        "calibrator": CAL_NAME,
        "cell_arcsec": cell,
        "group_id": scan.group_id,
        "imager": "wsclean",
        "photometry_radius_deg": round(PHOT_RADIUS_DEG[scan.setup], 4),
        "size_px": size,
    }
    # a converted MS still pending waits for calibration: its job is a calibration job
    awaits_calibration = scan.stage == MSStage.CONVERTED and scan.status == MSStatus.PENDING
    if awaits_calibration:
        created = times[1] + rng.randint(5, 30) * 1_000_000
    else:
        created = (scan.start_s + SCAN_S) * 1_000_000 + rng.randint(5, 40) * 1_000_000
    history = _new_job(
        _job_id(scan), JobType.CALIBRATE if awaits_calibration else JobType.PIPELINE, scan, params, created
    )
    host = rng.choice(_HOSTS)
    if awaits_calibration:
        _calibrator_not_ready(rng, history, host, created)
        return history
    t = history.job.create_time + rng.randint(2, 10) * 1_000_000
    path = _pipeline_path(scan, t)
    reached = _STEPS_REACHED[MSStage(scan.stage)]
    if scan.status == MSStatus.FAILED:
        _failing_attempts(rng, history, scan, host, t, path[: max(reached, 3)])
        return history
    history.act(Action.START, t)
    history.log(t + 100_000, f"attempt 1/{history.job.max_attempts} started on {host}")
    stages = path[:reached]
    if retried:
        restart = _attempt_dying_while_imaging(rng, history, scan, path)
        stages = [(JobStage.IMAGING, restart + 2_000_000), *path[6:reached]]
    for stage, when in stages:
        _progress(history, scan, stage, when)
    if scan.stage == MSStage.PHOTOMETRY_DONE:
        artifacts = [f"images/{scan.first_image_id + j}" for j in range(scan.n_images)]
        history.act(Action.SUCCEED, times[6], artifacts=artifacts)
        history.log(times[6] + 100_000, f"done: {scan.n_images} images, {measured} photometry measurements")
    return history


def _pipeline_path(scan: Scan, t: int) -> list[_PathStep]:
    """Every stage of a full run started at `t`, in pipeline order, at the times the MS reached them."""
    times = scan.times
    return [
        (JobStage.CONVERTING, t + 1_000_000),
        (JobStage.CONVERTED, times[1]),
        (JobStage.FLAGGING_RFI, times[1] + 2_000_000),
        (JobStage.SOLVING_CAL, times[2]),
        (JobStage.APPLYING_CAL, times[3]),
        (JobStage.IMAGING, times[4]),
        (JobStage.PHOTOMETRY, times[5]),
    ]


def _calibrator_not_ready(rng: random.Random, history: JobHistory, host: str, created: int) -> None:
    """Half of the waiting calibration jobs have tried once already and were sent back to PENDING."""
    if rng.random() < 0.5:
        history.act(Action.START, created + 20_000_000)
        history.log(created + 21_000_000, f"attempt 1/3 started on {host}")
        history.act(
            Action.FAIL,
            created + 90_000_000,
            message="calibration: no calibrator solutions valid at this time (0834+555 transit not yet processed)",
        )
        history.act(Action.RETRY, created + 95_000_000)
        history.log(created + 95_500_000, "retry scheduled: waiting for the next calibrator solution")


def _attempt_dying_while_imaging(rng: random.Random, history: JobHistory, scan: Scan, path: list[_PathStep]) -> int:
    """The first attempt dies while imaging and is retried; returns when the second attempt started
    (it starts over at imaging)."""
    fail_at = scan.times[4] + rng.randint(5, 60) * 1_000_000
    for stage, when in path[:6]:
        _progress(history, scan, stage, when)
    error = rng.choice(_ERRORS).format(ms=scan.path, group=scan.group_id)
    history.act(Action.FAIL, fail_at, message=error)
    history.log(fail_at + 100_000, f"ERROR {error}")
    history.act(Action.RETRY, fail_at + 30_000_000)
    restart = fail_at + 40_000_000
    history.act(Action.START, restart)
    history.log(restart + 100_000, f"attempt 2/{history.job.max_attempts} started on {rng.choice(_HOSTS)}")
    return restart


def _failing_attempts(
    rng: random.Random, history: JobHistory, scan: Scan, host: str, t: int, path: list[_PathStep]
) -> None:
    """Attempts that all die at the MS's last stage; every other one has used all three."""
    error = rng.choice(_ERRORS).format(ms=scan.path, group=scan.group_id)
    attempts = history.job.max_attempts if scan.index % 2 == 0 else 1
    last_stage_time = scan.times[scan.stage]
    fails = [scan.fail_time - (attempts - 1 - k) * 120_000_000 for k in range(attempts)]
    history.act(Action.START, t)
    history.log(t + 100_000, f"attempt 1/{history.job.max_attempts} started on {host}")
    for stage, when in path:
        _progress(history, scan, stage, min(when, last_stage_time))
    for k, fail_at in enumerate(fails):
        if k:
            history.act(Action.RETRY, fail_at - 100_000_000)
            history.act(Action.START, fail_at - 90_000_000)
            history.log(fail_at - 89_000_000, f"attempt {k + 1}/{history.job.max_attempts} started on {host}")
            _progress(history, scan, path[-1][0], fail_at - 80_000_000)
        history.act(Action.FAIL, fail_at, message=error)
        history.log(fail_at + 100_000, f"ERROR {error}")


def _progress(history: JobHistory, scan: Scan, stage: JobStage, when: int) -> None:
    """A PROGRESS event and the log line the pipeline writes on reaching `stage`."""
    history.act(Action.PROGRESS, when, stage=int(stage), progress=_STAGE_PROGRESS[stage])
    size, cell = IMAGING[scan.setup]
    text = {
        JobStage.CONVERTING: f"found 16/16 subband files for group {scan.group_id}; converting",
        JobStage.CONVERTED: f"wrote {scan.path}",
        JobStage.FLAGGING_RFI: "aoflagger: flagging RFI",
        JobStage.SOLVING_CAL: f"solving K, BP, G against {CAL_NAME}",
        JobStage.APPLYING_CAL: "applying calibration tables",
        JobStage.IMAGING: f"wsclean -size {size} {size} -scale {cell}asec -niter 50000 -mgain 0.8 {scan.path}",
        JobStage.PHOTOMETRY: f"forced photometry within {PHOT_RADIUS_DEG[scan.setup]:.2f} deg of the centre",
    }[stage]
    history.log(when + 200_000, text)


def _extra_job(rng: random.Random, scan: Scan, n: int, measured: int) -> JobHistory:
    """Re-runs on finished scans, in turn: cancelled re-imaging, a repeated photometry, re-imaging
    cancelled while running, a recalibration that failed three times."""
    kind = n % 4
    t = scan.times[6] + rng.randint(600, 7200) * 1_000_000
    job_type, suffix = (
        (JobType.IMAGE, "reimage"),
        (JobType.PHOTOMETRY, "rephot"),
        (JobType.IMAGE, "reimage"),
        (JobType.CALIBRATE, "recal"),
    )[kind]
    params: dict[str, object] = {"reason": "operator request", "size_px": 5040, "cell_arcsec": 2.5}
    history = _new_job(f"{_job_id(scan)}-{suffix}", job_type, scan, params, t)
    host = rng.choice(_HOSTS)
    if kind == 0:
        history.act(Action.CANCEL, t + 300_000_000, message="superseded by the pipeline run")
    elif kind == 1:
        history.act(Action.START, t + 5_000_000)
        history.log(t + 5_100_000, f"attempt 1/3 started on {host}")
        _progress(history, scan, JobStage.PHOTOMETRY, t + 6_000_000)
        history.act(Action.SUCCEED, t + 120_000_000, artifacts=[f"images/{scan.first_image_id}"])
        history.log(t + 120_100_000, f"done: {measured} photometry measurements")
    elif kind == 2:
        history.act(Action.START, t + 5_000_000)
        history.log(t + 5_100_000, f"attempt 1/3 started on {host}")
        _progress(history, scan, JobStage.IMAGING, t + 6_000_000)
        history.act(Action.CANCEL, t + 200_000_000, message="operator cancelled: wrong imaging parameters")
    else:
        for attempt in range(history.job.max_attempts):
            start = t + attempt * 600_000_000
            if attempt:
                history.act(Action.RETRY, start - 1_000_000)
            history.act(Action.START, start)
            history.log(start + 100_000, f"attempt {attempt + 1}/3 started on {host}")
            _progress(history, scan, JobStage.SOLVING_CAL, start + 1_000_000)
            error = "calibration: bandpass solutions flagged for 61 % of antennas"
            history.act(Action.FAIL, start + 240_000_000, message=error)
            history.log(start + 240_100_000, f"ERROR {error}")
    return history
