"""Domain records: what the repositories store and the servicers translate to messages.

Times are integer microseconds since the Unix epoch (0 = not set); observation times are MJD
floats. Enum numbers mirror the contract's enums exactly (a test checks it), so translation is an
int copy.

Records are immutable (NamedTuples; their sequences are tuples, QA metrics a read-only mapping):
the read cache shares one record among every caller, so nobody may change it; a changed record is
a new one (`_replace`). NamedTuples, not frozen dataclasses: those build through object.__setattr__,
2.7 us for an Image against 0.4 us, on every row read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import repeat
from types import MappingProxyType
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")


class MSStage(IntEnum):
    UNSPECIFIED = 0
    CONVERTED = 1
    FLAGGED = 2
    CALIBRATION_SOLVED = 3
    CALIBRATED = 4
    IMAGED = 5
    PHOTOMETRY_DONE = 6


class MSStatus(IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    IN_PROGRESS = 2
    COMPLETED = 3
    FAILED = 4


class CalTableType(IntEnum):
    UNSPECIFIED = 0
    K = 1
    BA = 2
    BP = 3
    GA = 4
    GP = 5
    G2 = 6  # "2G" in the contract; a Python name cannot start with a digit
    FLUX = 7


class ImageType(IntEnum):
    UNSPECIFIED = 0
    CONTINUUM = 1
    CLEAN = 2
    DIRTY = 3
    RESIDUAL = 4
    PSF = 5
    MODEL = 6
    PBCOR = 7


class QAGrade(IntEnum):
    UNSPECIFIED = 0
    GOOD = 1
    WARNING = 2
    BAD = 3


class JobState(IntEnum):
    UNSPECIFIED = 0
    PENDING = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5


class JobStage(IntEnum):
    UNSPECIFIED = 0
    CONVERTING = 1
    CONVERTED = 2
    FLAGGING_RFI = 3
    SOLVING_CAL = 4
    APPLYING_CAL = 5
    IMAGING = 6
    PHOTOMETRY = 7
    DONE = 8


class JobType(IntEnum):
    UNSPECIFIED = 0
    CONVERT = 1
    CALIBRATE = 2
    IMAGE = 3
    PHOTOMETRY = 4
    PIPELINE = 5


class JobEventType(IntEnum):
    UNSPECIFIED = 0
    SNAPSHOT = 1
    CREATED = 2
    STATE_CHANGED = 3
    PROGRESS = 4
    UPDATED = 6  # 5 is the proto's HEARTBEAT, which is never stored


NO_METRICS: Mapping[str, float] = MappingProxyType({})


class CalibrationTable(NamedTuple):
    path: str
    type: int = 0
    valid_start_mjd: float = 0.0
    valid_end_mjd: float = 0.0


class MeasurementSet(NamedTuple):
    path: str
    group_id: str = ""
    field_name: str = ""
    start_mjd: float = 0.0
    mid_mjd: float = 0.0
    end_mjd: float = 0.0
    pointing_ra_deg: float = 0.0
    pointing_dec_deg: float = 0.0
    phase_center_ra_deg: float = 0.0
    phase_center_dec_deg: float = 0.0
    stage: int = 0
    status: int = 0
    cal_applied: bool = False
    calibration_tables: tuple[CalibrationTable, ...] = ()
    create_time: int = 0
    update_time: int = 0
    stage_update_time: int = 0
    process_time: int = 0
    image_count: int = 0
    # Who registered it and who last changed it: caller names (TokenPolicy.caller_name); "" unknown.
    creator: str = ""
    last_modifier: str = ""


# Fields a caller may write on a measurement set (update masks name these).
MS_WRITABLE_FIELDS = (
    "group_id",
    "field_name",
    "start_mjd",
    "mid_mjd",
    "end_mjd",
    "pointing_ra_deg",
    "pointing_dec_deg",
    "phase_center_ra_deg",
    "phase_center_dec_deg",
    "stage",
    "status",
    "cal_applied",
    "calibration_tables",
    "process_time",
)


class Image(NamedTuple):
    id: int
    path: str
    ms_path: str
    type: int = 0
    format: str = "fits"
    create_time: int = 0
    update_time: int = 0
    mid_mjd: float = 0.0
    beam_major_arcsec: float = 0.0
    beam_minor_arcsec: float = 0.0
    beam_pa_deg: float = 0.0
    noise_jy: float = 0.0
    dynamic_range: float = 0.0
    pbcor: bool = False
    field_name: str = ""
    center_ra_deg: float = 0.0
    center_dec_deg: float = 0.0
    size_x_px: int = 0
    size_y_px: int = 0
    cell_size_arcsec: float = 0.0
    frequency_ghz: float = 0.0
    bandwidth_mhz: float = 0.0
    integration_s: float = 0.0
    qa_grade: int = 0
    qa_summary: str = ""
    qa_metrics: Mapping[str, float] = NO_METRICS
    qa_source_count: int = 0
    qa_peak_flux_jy: float = 0.0
    photometry_count: int = 0
    # Who registered it and who last changed it: caller names (TokenPolicy.caller_name); "" unknown.
    creator: str = ""
    last_modifier: str = ""


# Update-mask paths of an image -> record attributes they write.
IMAGE_UPDATABLE_FIELDS: dict[str, tuple[str, ...]] = {
    "type": ("type",),
    "format": ("format",),
    "mid_mjd": ("mid_mjd",),
    "beam_major_arcsec": ("beam_major_arcsec",),
    "beam_minor_arcsec": ("beam_minor_arcsec",),
    "beam_pa_deg": ("beam_pa_deg",),
    "noise_jy": ("noise_jy",),
    "dynamic_range": ("dynamic_range",),
    "pbcor": ("pbcor",),
    "field_name": ("field_name",),
    "center_ra_deg": ("center_ra_deg",),
    "center_dec_deg": ("center_dec_deg",),
    "size_x_px": ("size_x_px",),
    "size_y_px": ("size_y_px",),
    "cell_size_arcsec": ("cell_size_arcsec",),
    "frequency_ghz": ("frequency_ghz",),
    "bandwidth_mhz": ("bandwidth_mhz",),
    "integration_s": ("integration_s",),
    "qa": ("qa_grade", "qa_summary", "qa_metrics", "qa_source_count", "qa_peak_flux_jy"),
    "qa.grade": ("qa_grade",),
    "qa.summary": ("qa_summary",),
    "qa.metrics": ("qa_metrics",),
    "qa.source_count": ("qa_source_count",),
    "qa.peak_flux_jy": ("qa_peak_flux_jy",),
}


class Variability(NamedTuple):
    epoch_count: int = 0
    mean_flux_jy: float = 0.0
    std_flux_jy: float = 0.0
    min_flux_jy: float = 0.0
    max_flux_jy: float = 0.0
    chi2_reduced: float = 0.0
    eta: float = 0.0
    v: float = 0.0
    sigma_deviation: float = 0.0
    last_mjd: float = 0.0
    is_variable: bool = False


class Source(NamedTuple):
    id: str
    designation: str = ""
    ra_deg: float = 0.0
    dec_deg: float = 0.0
    catalog: str = ""
    catalog_flux_mjy: float = 0.0
    first_detection_mjd: float = 0.0
    last_detection_mjd: float = 0.0
    detection_count: int = 0
    variability: Variability = Variability()
    create_time: int = 0
    update_time: int = 0


class Photometry(NamedTuple):
    """One measurement. A tuple in the storage's column order (after source_id), because ingest
    handles a hundred thousand of these a second and slices them straight into rows."""

    source_id: str
    image_id: int = 0
    ra_deg: float = 0.0
    dec_deg: float = 0.0
    catalog_flux_mjy: float = 0.0
    peak_flux_jy: float = 0.0
    peak_flux_err_jy: float = 0.0
    integrated_flux_jy: float = 0.0
    integrated_flux_err_jy: float = 0.0
    normalized_flux: float = 0.0
    normalized_flux_err: float = 0.0
    snr: float = 0.0
    local_rms_jy: float = 0.0
    separation_from_center_deg: float = 0.0
    quality_flag: str = ""
    observation_mjd: float = 0.0
    measure_time: int = 0


_NUMBERS = slice(Photometry._fields.index("ra_deg"), Photometry._fields.index("quality_flag"))
# The names of PhotometryBatch.numbers, in order (also PhotometryColumns' names for them).
PHOTOMETRY_NUMBERS: tuple[str, ...] = Photometry._fields[_NUMBERS.start : _NUMBERS.stop]


@dataclass(frozen=True, slots=True)
class PhotometryBatch:
    """One RecordPhotometry call's measurements as columns, one value per source in each: what the
    repository stores. Columns, not rows, because a batch sent as columns (PhotometryColumns) then
    reaches storage without being turned into 1,000 rows and back."""

    source_ids: list[str]
    numbers: list[Sequence[float]]  # PHOTOMETRY_NUMBERS
    quality_flags: list[str] | None  # None: all empty
    observation_mjd: Sequence[float]  # 0: the image's
    measure_time: Sequence[int]  # unix microseconds; 0: now

    @classmethod
    def of_rows(cls, rows: Sequence[Photometry]) -> PhotometryBatch:
        if not rows:
            return cls([], [[] for _ in PHOTOMETRY_NUMBERS], None, [], [])
        columns = list(zip(*rows, strict=True))
        flags = columns[_NUMBERS.stop]
        return cls(
            list(columns[0]),
            list(columns[_NUMBERS]),
            list(flags) if any(flags) else None,
            columns[-2],
            columns[-1],
        )

    def rows(self) -> list[Photometry]:
        """The measurements one by one (image_id 0), as the per-measurement checks take them."""
        n = len(self.source_ids)
        flags = self.quality_flags or repeat("", n)
        columns = (self.source_ids, repeat(0, n), *self.numbers, flags, self.observation_mjd, self.measure_time)
        return [tuple.__new__(Photometry, row) for row in zip(*columns, strict=False)]


class PhotometryResult(NamedTuple):
    image_id: int
    recorded_count: int
    created_source_count: int
    updated_source_count: int


class JobTransition(NamedTuple):
    from_state: int
    to_state: int
    stage: int
    message: str
    time: int
    sequence: int = 0
    actor: str = ""  # who made it: the caller name of the call's token (TokenPolicy.caller_name); "" unknown


class Job(NamedTuple):
    id: str
    type: int = 0
    ms_path: str = ""
    target_path: str = ""
    parameters_json: str = "{}"
    state: int = JobState.PENDING
    stage: int = 0
    progress_percent: float = 0.0
    attempt: int = 0
    max_attempts: int = 3
    create_time: int = 0
    start_time: int = 0
    end_time: int = 0
    update_time: int = 0
    error_message: str = ""
    artifacts: tuple[str, ...] = ()
    log_line_count: int = 0
    # Claim order: higher first. Set on create and by UpdateJob.
    priority: int = 0
    # The lease of a RUNNING job (ClaimJob, StartJob with a worker): who holds it, until when, for
    # how long each renewal extends it (us), and the SHA-256 of its token (hex; the token itself is
    # never stored). All empty/0 without a lease.
    lease_holder: str = ""
    lease_expire_time: int = 0
    lease_duration: int = 0
    lease_token_hash: str = ""
    transitions: tuple[JobTransition, ...] = ()


class JobEvent(NamedTuple):
    sequence: int
    type: int
    job: Job
    transition: JobTransition | None = None


class Heartbeat(NamedTuple):
    """A stream position with no event: lets a watcher resume even before its first event."""

    sequence: int


class JobLogEntry(NamedTuple):
    line_number: int
    time: int
    text: str


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]  # never modified: shared like the records
    next_after: list[object] | None  # keyset of the last item when more may follow
    total_size: int


class Match(NamedTuple, Generic[T]):
    item: T
    separation_deg: float
