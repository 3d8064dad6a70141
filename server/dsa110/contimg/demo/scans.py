"""The observing schedule: one drift scan (and one measurement set) per slot, with its pipeline stage.

Scans are planned day by day until every asked-for image belongs to one, then a tail of newer scans
the pipeline has not imaged yet follows. Each scan gets its times (start, the moments it reached
each pipeline stage), its pointing, and its noise; every later table is derived from these.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from dsa110.contimg.server.domain.records import MSStage, MSStatus

from .survey import (
    CAL_RA_DEG,
    DAY_S,
    FIRST_DAY_MJD,
    IMAGING,
    IMAGING_WEIGHTS,
    LAST_DAY_MJD,
    MAIN_STRIP,
    SCAN_S,
    SCANS_PER_DAY,
    SIDEREAL_DEG_PER_DAY,
    STRIP_RUN_DAYS,
    STRIP_WEIGHTS,
    STRIPS,
    UNIX_EPOCH_MJD,
    iso,
    lst_deg,
    mjd,
)

# "photometry": finished (PHOTOMETRY_DONE); "imaged": waiting for photometry; "failed"; "pending":
# newer than anything imaged, somewhere earlier in the pipeline.
ScanKind = Literal["photometry", "imaged", "failed", "pending"]

# Seconds (uniformly drawn bounds) from one pipeline stage to the next, starting at the scan's end:
# conversion, flagging, solving, applying, imaging, photometry.
_STAGE_DELAYS_S = ((120, 420), (40, 120), (60, 240), (30, 120), (400, 1500), (60, 300))


@dataclass(slots=True)
class Scan:
    """One drift scan and its measurement set."""

    index: int
    day: int
    strip: float
    setup: int  # index into IMAGING
    kind: ScanKind
    n_images: int = 0
    stage: int = 0
    status: int = 0
    start_s: int = 0
    group_id: str = ""
    path: str = ""
    start_mjd: float = 0.0
    mid_mjd: float = 0.0
    end_mjd: float = 0.0
    ra: float = 0.0
    noise_jy: float = 0.0
    first_image_id: int = 0
    times: list[int] = field(default_factory=list)  # microseconds at which stage 1..6 was reached
    fail_time: int = 0


class _Slot(NamedTuple):
    """A planned scan before it has a time: its observing day, strip, imaging setup and images."""

    day: int
    strip: float
    setup: int
    images: int  # 0: not imaged (yet); -1: failed before imaging


def schedule(rng: random.Random, images: int) -> list[Scan]:
    """Scans day by day until the images are placed, then the newest, unimaged ones."""
    plan, day_sizes = _plan_imaged_days(rng, images)
    imaged = [i for i, p in enumerate(plan) if p.images > 0]
    awaiting_photometry = set(imaged[-min(12, max(1, len(imaged) // 150)) :])
    _append_unimaged_tail(rng, plan, day_sizes)
    scans = _timed_scans(rng, plan, day_sizes, awaiting_photometry)
    _assign_stages(rng, scans)
    return scans


def _plan_imaged_days(rng: random.Random, images: int) -> tuple[list[_Slot], list[int]]:
    """Slots day by day, 3 to 5 images each (a few failed), until exactly `images` are placed.

    Returns the slots and every day's number of scans (the last day is usually not full yet).
    """
    remaining = images
    plan: list[_Slot] = []
    day_sizes: list[int] = []
    strip, run_left = MAIN_STRIP, rng.randint(*STRIP_RUN_DAYS)
    while remaining > 0:
        day = len(day_sizes)
        if run_left == 0:
            strip = rng.choices(STRIPS, STRIP_WEIGHTS)[0]
            run_left = rng.randint(*STRIP_RUN_DAYS)
        run_left -= 1
        setup = rng.choices(range(len(IMAGING)), IMAGING_WEIGHTS)[0] if day else 0
        scans = rng.randint(*SCANS_PER_DAY)
        day_sizes.append(scans)
        for _ in range(scans):
            if remaining == 0:
                break
            if rng.random() < 0.005:
                plan.append(_Slot(day, strip, setup, -1))
                continue
            k = min(remaining, rng.choices((3, 4, 5), (0.3, 0.45, 0.25))[0])
            plan.append(_Slot(day, strip, setup, k))
            remaining -= k
    return plan, day_sizes


def _append_unimaged_tail(rng: random.Random, plan: list[_Slot], day_sizes: list[int]) -> None:
    """The newest scans, not imaged yet: they continue the last day (and start new ones when full)."""
    tail = min(40, max(6, len(plan) // 40))
    day, strip, setup, _ = plan[-1]
    used_today = sum(1 for p in plan if p.day == day)
    for _ in range(tail):
        if used_today >= day_sizes[day]:
            day += 1
            used_today = 0
            day_sizes.append(rng.randint(*SCANS_PER_DAY))
        plan.append(_Slot(day, strip, setup, 0))
        used_today += 1


def _timed_scans(
    rng: random.Random, plan: list[_Slot], day_sizes: list[int], awaiting_photometry: set[int]
) -> list[Scan]:
    """The slots as scans: each day one block of back-to-back scans, starting at a random time."""
    first_day = min(FIRST_DAY_MJD, LAST_DAY_MJD - len(day_sizes))
    scans: list[Scan] = []
    block_start = block_end = 0
    image_id = 1
    slot = 0
    previous_day = -1
    for index, (day, strip, setup, k) in enumerate(plan):
        if day != previous_day:
            block_start = max(_day_start(rng, first_day, day, day_sizes[day]), block_end)
            slot = 0
            previous_day = day
        start = block_start + slot * SCAN_S
        slot += 1
        block_end = start + SCAN_S
        kind: ScanKind
        if k > 0:
            kind = "imaged" if index in awaiting_photometry else "photometry"
        else:
            kind = "failed" if k < 0 else "pending"
        scan = Scan(index, day, strip, setup, kind, n_images=max(k, 0), start_s=start)
        group = iso(start)
        scan.group_id = group
        scan.path = f"/stage/dsa110-contimg/ms/science/{group[:10]}/{group}.ms"
        scan.start_mjd = mjd(start)
        scan.mid_mjd = mjd(start + SCAN_S / 2)
        scan.end_mjd = mjd(start + SCAN_S)
        scan.ra = lst_deg(scan.mid_mjd)
        scan.noise_jy = (0.3 + 1.1 * rng.betavariate(2.0, 5.0)) * 1e-3
        if k > 0:
            scan.first_image_id = image_id
            image_id += k
        scan.times = _stage_times(rng, start + SCAN_S)
        scans.append(scan)
    return scans


def _day_start(rng: random.Random, first_day: int, day: int, scans: int) -> int:
    """Unix seconds at which the day's block of scans would start (the caller delays it while the
    previous day's block is still running)."""
    day_start = (first_day + day - UNIX_EPOCH_MJD) * DAY_S
    if day == 0:
        # start a little before 0834+555 transits, so even a small database holds the calibrator
        target = CAL_RA_DEG - rng.uniform(4.0, 16.0)
        offset = int((target - lst_deg(mjd(day_start))) % 360.0 / SIDEREAL_DEG_PER_DAY * DAY_S)
    else:
        offset = rng.randint(0, max(0, DAY_S - scans * SCAN_S))
    return day_start + offset


def _stage_times(rng: random.Random, end_s: int) -> list[int]:
    """Microseconds at which the scan reached MS stage 1..6 (index 0 unused, so `times[stage]` works)."""
    t = end_s * 1_000_000
    times = [0]
    for lo, hi in _STAGE_DELAYS_S:
        t += rng.randint(lo, hi) * 1_000_000 + rng.randint(0, 999_999)
        times.append(t)
    return times


def _assign_stages(rng: random.Random, scans: list[Scan]) -> None:
    for scan in scans:
        if scan.kind == "photometry":
            scan.stage, scan.status = MSStage.PHOTOMETRY_DONE, MSStatus.COMPLETED
        elif scan.kind == "imaged":
            scan.stage, scan.status = MSStage.IMAGED, MSStatus.IN_PROGRESS
        elif scan.kind == "failed":
            scan.stage = rng.choice((MSStage.CONVERTED, MSStage.FLAGGED, MSStage.CALIBRATION_SOLVED))
            scan.status = MSStatus.FAILED
    tail = [scan for scan in scans if scan.kind == "pending"]
    # oldest first: one failed, then later and later stages of the pipeline, newest still pending
    tail[0].kind = "failed"
    tail[0].stage, tail[0].status = MSStage.FLAGGED, MSStatus.FAILED
    rest = tail[1:]
    ladder = (
        (MSStage.CALIBRATED, MSStatus.IN_PROGRESS),
        (MSStage.CALIBRATION_SOLVED, MSStatus.IN_PROGRESS),
        (MSStage.FLAGGED, MSStatus.IN_PROGRESS),
        (MSStage.CONVERTED, MSStatus.PENDING),
    )
    for i, scan in enumerate(rest):
        scan.stage, scan.status = ladder[min(len(ladder) - 1, i * len(ladder) // len(rest))]
    for scan in scans:
        if scan.status == MSStatus.FAILED:
            scan.fail_time = scan.times[scan.stage] + 330_000_000
