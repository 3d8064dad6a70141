"""What storing a measurement set means, whatever the engine: the record a create registers and
the record an upsert merges, with the rules a partial update must keep."""

from __future__ import annotations

from collections.abc import Sequence

from .errors import FailedPrecondition, InvalidArgument
from .names import ms_name
from .records import MeasurementSet, MSStage, MSStatus


def finished(ms: MeasurementSet) -> bool:
    return ms.stage == MSStage.PHOTOMETRY_DONE and ms.status == MSStatus.COMPLETED


def registered(ms: MeasurementSet, now: int) -> MeasurementSet:
    """`ms` as a create stores it, stamped at `now` (one registered already finished is processed)."""
    return ms._replace(
        create_time=now,
        update_time=now,
        stage_update_time=now if ms.stage else 0,
        image_count=0,
        process_time=now if finished(ms) and not ms.process_time else ms.process_time,
    )


def merged(current: MeasurementSet, ms: MeasurementSet, fields: Sequence[str], now: int) -> MeasurementSet:
    """`current` with `fields` of `ms`, stamped at `now`: what an upsert stores (or the error why not)."""
    updated = current._replace(**{f: getattr(ms, f) for f in fields})
    # Checked on the merged record: a partial update must not contradict stored values.
    if updated.start_mjd and updated.end_mjd and updated.start_mjd > updated.end_mjd:
        field = "end_mjd" if "end_mjd" in fields else "start_mjd"
        raise InvalidArgument.single(f"measurement_set.{field}", "start_mjd would be later than end_mjd")
    if "stage" in fields and updated.stage != current.stage:
        if updated.stage < current.stage:
            raise FailedPrecondition(
                f"stage cannot move back from {MSStage(current.stage).name} to {MSStage(updated.stage).name}",
                reason="INVALID_STAGE_TRANSITION",
                metadata={
                    "resource": ms_name(current.path),
                    "from_stage": MSStage(current.stage).name,
                    "to_stage": MSStage(updated.stage).name,
                },
            )
        updated = updated._replace(stage_update_time=now)
    if finished(updated) and not updated.process_time:
        updated = updated._replace(process_time=now)
    return updated._replace(update_time=now)
