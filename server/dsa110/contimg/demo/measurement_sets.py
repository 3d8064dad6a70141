"""Rows of `measurement_sets`: one per scan, with the calibration tables applied to it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from dsa110.contimg.server.domain.records import CalTableType, MSStage
from dsa110.contimg.server.storage import rows

from .scans import Scan
from .survey import CAL_NAME, CAL_RA_DEG, DAY_S, FIRST_DAY_MJD, SIDEREAL_DEG_PER_DAY, UNIX_EPOCH_MJD, iso

# The server's own column order (ms_rows yields in it), up to who wrote them: demo rows have no caller.
MS_COLUMNS = rows.MS_COLUMNS[: rows.MS_COLUMNS.index("creator")]

_CAL_SUFFIX = {
    CalTableType.K: "kcal",
    CalTableType.BA: "bacal",
    CalTableType.BP: "bpcal",
    CalTableType.GA: "gacal",
    CalTableType.GP: "gpcal",
    CalTableType.G2: "2gcal",
    CalTableType.FLUX: "fluxscale",
}


class CalibrationTables:
    """The calibration tables' JSON per calibrator transit, built once for all the scans near it."""

    def __init__(self) -> None:
        self._by_transit: dict[int, str] = {}

    def json_for(self, scan: Scan) -> str:
        """Tables solved on the calibrator transit nearest to the scan, valid half a day either side."""
        turn = 360.0 / SIDEREAL_DEG_PER_DAY
        transit = scan.mid_mjd + ((CAL_RA_DEG - scan.ra + 180.0) % 360.0 - 180.0) / SIDEREAL_DEG_PER_DAY
        key = round((transit - FIRST_DAY_MJD) / turn)
        cached = self._by_transit.get(key)
        if cached is not None:
            return cached
        stamp = iso(round((transit - UNIX_EPOCH_MJD) * DAY_S))
        types = [CalTableType.K, CalTableType.BP, CalTableType.GA, CalTableType.GP]
        if key % 3 == 0:
            types.append(CalTableType.G2)
        if key % 5 == 0:
            types.append(CalTableType.FLUX)
        tables = [
            {
                "path": f"/stage/dsa110-contimg/caltables/{stamp[:10]}/{stamp}_{CAL_NAME}.{_CAL_SUFFIX[t]}",
                "type": int(t),
                "valid_start_mjd": round(transit - 0.5, 6),
                "valid_end_mjd": round(transit + 0.5, 6),
            }
            for t in types
        ]
        text = json.dumps(tables)
        self._by_transit[key] = text
        return text


def ms_rows(scans: Iterable[Scan]) -> Iterator[tuple[object, ...]]:
    calibration = CalibrationTables()
    for scan in scans:
        stage_time = scan.times[scan.stage]
        calibrated = scan.stage >= MSStage.CALIBRATED
        done = scan.stage == MSStage.PHOTOMETRY_DONE
        field_name = f"drift_dec{scan.strip:+.2f}"
        yield (
            scan.path,
            scan.group_id,
            field_name,
            scan.start_mjd,
            scan.mid_mjd,
            scan.end_mjd,
            scan.ra,
            scan.strip,
            scan.ra,
            scan.strip,
            int(scan.stage),
            int(scan.status),
            int(calibrated),
            calibration.json_for(scan) if calibrated else "[]",
            scan.times[1],
            scan.fail_time or stage_time,
            stage_time,
            stage_time if done else 0,
            scan.n_images,
        )
