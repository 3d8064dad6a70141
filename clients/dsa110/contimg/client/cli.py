"""`contimg`: query the contimg data-products server from a shell.

Exit codes: 0 success, 1 unexpected failure, 2 bad usage or INVALID_ARGUMENT, 3 NOT_FOUND,
4 UNAVAILABLE or DEADLINE_EXCEEDED, 5 any other server error.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from dsa110.contimg.v1 import images_pb2, sources_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from . import coords, export, names, times
from ._sync import Client
from .config import ClientConfig, parse_deadline
from .errors import (
    ContimgError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)

EXIT_OK, EXIT_UNEXPECTED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_SERVER = 0, 1, 2, 3, 4, 5
MAX_PAGE_SIZE = 1000
# Rows buffered to size the table columns before streaming the rest with those widths.
_WIDTH_SAMPLE = 200

Row = Callable[[Any], str]
Columns = Sequence[tuple[str, Row]]


# --------------------------------------------------------------------------------------------
# Formatting


def _enum(message: Message, field: str) -> str:
    # STATE_RUNNING -> RUNNING: the enum name prefix only repeats the column header; a value this
    # client does not know (a newer server's) shows as its number rather than as nothing.
    return "-" if getattr(message, field) == 0 else export.enum_label(message, field)


def _f(fmt: str, value: float) -> str:
    return format(value, fmt) if value else "-"


def _mjy(jy: float) -> str:
    return _f(".3f", jy * 1000)


IMAGE_COLUMNS: Columns = [
    ("NAME", lambda i: i.name),
    ("TYPE", lambda i: _enum(i, "type")),
    ("MID_MJD", lambda i: _f(".5f", i.mid_mjd)),
    ("RA_DEG", lambda i: f"{i.center_ra_deg:.4f}"),
    ("DEC_DEG", lambda i: f"{i.center_dec_deg:.4f}"),
    ("NOISE_MJY", lambda i: _mjy(i.noise_jy)),
    ("QA", lambda i: _enum(i.qa, "grade")),
    ("PATH", lambda i: i.path),
]
MS_COLUMNS: Columns = [
    ("PATH", lambda s: s.path),
    ("STAGE", lambda s: _enum(s, "stage")),
    ("STATUS", lambda s: _enum(s, "status")),
    ("MID_MJD", lambda s: _f(".5f", s.mid_mjd)),
    ("DEC_DEG", lambda s: f"{s.pointing_dec_deg:.2f}"),
    ("IMAGES", lambda s: str(s.image_count)),
]
SOURCE_COLUMNS: Columns = [
    ("NAME", lambda s: s.name),
    ("RA_DEG", lambda s: f"{s.ra_deg:.5f}"),
    ("DEC_DEG", lambda s: f"{s.dec_deg:.5f}"),
    ("EPOCHS", lambda s: str(s.variability.epoch_count)),
    ("MEAN_MJY", lambda s: _mjy(s.variability.mean_flux_jy)),
    ("ETA", lambda s: _f(".2f", s.variability.eta)),
    ("V", lambda s: _f(".3f", s.variability.v)),
    ("VARIABLE", lambda s: "yes" if s.variability.is_variable else ""),
]
POINT_COLUMNS: Columns = [
    ("OBS_MJD", lambda p: f"{p.observation_mjd:.5f}"),
    ("PEAK_MJY", lambda p: _mjy(p.peak_flux_jy)),
    ("ERR_MJY", lambda p: _mjy(p.peak_flux_err_jy)),
    ("SNR", lambda p: _f(".1f", p.snr)),
    ("IMAGE", lambda p: p.image),
    ("FLAG", lambda p: p.quality_flag),
]
JOB_COLUMNS: Columns = [
    ("NAME", lambda j: j.name),
    ("TYPE", lambda j: _enum(j, "type")),
    ("STATE", lambda j: _enum(j, "state")),
    ("STAGE", lambda j: _enum(j, "stage")),
    ("PROGRESS", lambda j: f"{j.progress_percent:.0f}%"),
    ("ATTEMPT", lambda j: f"{j.attempt}/{j.max_attempts}"),
    ("PRIORITY", lambda j: str(j.priority)),
    ("LEASE_HOLDER", lambda j: j.lease_holder or "-"),  # the worker holding the job's lease
    ("UPDATED", lambda j: j.update_time.ToJsonString() if j.HasField("update_time") else "-"),
    ("TARGET", lambda j: j.ms_path or j.measurement_set),
]
EVENT_COLUMNS: Columns = [
    ("SEQ", lambda e: str(e.sequence)),
    ("EVENT", lambda e: _enum(e, "type")),
    *[(header, lambda e, row=row: row(e.job)) for header, row in JOB_COLUMNS[:5]],
    ("ACTOR", lambda e: e.transition.actor or "-"),  # who made the change ("-": a snapshot, or unknown)
    ("MESSAGE", lambda e: e.transition.message),
]


def _matched(columns: Columns, field: str) -> Columns:
    """Columns for a Search response item: separation first, then the matched resource's."""
    return [
        ("SEP_DEG", lambda m: f"{m.separation_deg:.4f}"),
        *[(header, lambda m, row=row: row(getattr(m, field))) for header, row in columns],
    ]


class Output:
    """Where and how a command prints: `format` is table (the default), json (as `as_json`), or a
    file format of export.py (csv, votable). A table of a listing ends with a line on `notes`
    (stderr, so that pipes see only rows): how many rows of the total, or `no results`."""

    def __init__(self, as_json: bool, stream: TextIO, format: str | None = None, notes: TextIO | None = None) -> None:
        self.format = format or ("json" if as_json else "table")
        self.as_json = self.format == "json"
        self.stream = stream
        self.notes = notes

    def json(self, message: Message) -> None:
        text = json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)
        print(text, file=self.stream, flush=True)

    def rows(
        self,
        items: Iterable[Any],
        columns: Columns,
        *,
        follow: bool = False,
        schema: type[Message] | None = None,
        about: Message | None = None,
    ) -> None:
        """One JSON object per line, an aligned table, or (given the items' message type, `schema`)
        CSV or VOTable, with `about` as the VOTable's PARAMs; `follow` prints each row as it comes."""
        if self.format in export.FILE_FORMATS:
            if schema is None:
                raise ValueError(f"this command has no --format {self.format}")
            if self.format == "csv":
                export.to_csv(items, export.fields(schema), self.stream)
            else:
                export.to_votable(items, export.fields(schema), self.stream, about=about)
            return
        if self.as_json:
            for item in items:
                self.json(item)
            return
        headers = [h for h, _ in columns]
        widths = [len(h) for h in headers]
        iterator = iter(items)
        # Following a stream, only the first row can size the columns without holding output back.
        head = itertools.islice(iterator, 1 if follow else _WIDTH_SAMPLE)
        sample = [self._cells(item, columns) for item in head]
        for cells in sample:
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
        self._line(headers, widths)
        count = 0
        for cells in itertools.chain(sample, (self._cells(i, columns) for i in iterator)):
            widths = [max(w, len(c)) for w, c in zip(widths, cells, strict=True)]
            self._line(cells, widths)
            count += 1
        if isinstance(items, export.Listing) and not follow:
            print(export.summary(count, items.total), file=self.notes or sys.stderr, flush=True)

    def one(self, message: Message) -> None:
        if self.as_json:
            self.json(message)
            return
        flat = dict(_flatten(json_format.MessageToDict(message, preserving_proto_field_name=True)))
        width = max((len(k) for k in flat), default=0)
        for key, value in flat.items():
            print(f"{key:<{width}}  {value}", file=self.stream)

    @staticmethod
    def _cells(item: Any, columns: Columns) -> list[str]:
        return [str(row(item)) for _, row in columns]

    def _line(self, cells: Sequence[str], widths: Sequence[int]) -> None:
        text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
        print(text, file=self.stream, flush=True)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}.{key}" if prefix else key)
    elif isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        for index, inner in enumerate(value):
            yield from _flatten(inner, f"{prefix}[{index}]")
    elif isinstance(value, list):
        yield prefix, ", ".join(str(v) for v in value)
    else:
        yield prefix, str(value)


# --------------------------------------------------------------------------------------------
# Commands


def _limited(items: Iterable[Any], limit: int | None) -> Iterable[Any]:
    return export.Listing(items, limit)  # a table of it ends with the count and the listing's total


def _page_size(args: argparse.Namespace) -> int:
    if args.page_size:
        return int(args.page_size)
    return min(args.limit, MAX_PAGE_SIZE) if args.limit else 0


def _prefixed(prefix: str, name: str) -> str:
    return name if name.startswith(prefix) else prefix + name


def images_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.list_images(args.filter, args.order_by, _page_size(args))
    out.rows(_limited(pager, args.limit), IMAGE_COLUMNS, schema=images_pb2.Image)


def images_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    wanted = [_prefixed(names.IMAGES, n) for n in args.names]
    if len(wanted) == 1:
        out.one(client.get_image(wanted[0]))
    else:
        out.rows(client.batch_get_images(wanted).images, IMAGE_COLUMNS)


def images_search(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.search_images(args.ra_deg, args.dec_deg, args.filter, _page_size(args))
    out.rows(_limited(pager, args.limit), _matched(IMAGE_COLUMNS, "image"))


def sources_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.list_sources(args.filter, args.order_by, _page_size(args))
    out.rows(_limited(pager, args.limit), SOURCE_COLUMNS)


def sources_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    wanted = [_prefixed(names.SOURCES, n) for n in args.names]
    if len(wanted) == 1:
        out.one(client.get_source(wanted[0]))
    else:
        out.rows(client.batch_get_sources(wanted).sources, SOURCE_COLUMNS)


def sources_search(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.search_sources(args.ra_deg, args.dec_deg, args.radius_deg, args.filter, _page_size(args))
    out.rows(_limited(pager, args.limit), _matched(SOURCE_COLUMNS, "source"), schema=sources_pb2.SourceMatch)


def sources_lightcurve(client: Client, args: argparse.Namespace, out: Output) -> None:
    curve = client.get_lightcurve(_prefixed(names.SOURCES, args.name), args.start_mjd, args.end_mjd)
    if getattr(args, "plot", None):
        from .plot import save_lightcurve  # matplotlib: only when asked for

        save_lightcurve(curve, args.plot, args.name)
        print(f"lightcurve plot written to {args.plot}", file=sys.stderr)
    source = curve.source if curve.HasField("source") else None
    out.rows(_limited(curve.points, args.limit), POINT_COLUMNS, schema=sources_pb2.PhotometryMeasurement, about=source)


def ms_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.list_measurement_sets(args.filter, args.order_by, _page_size(args))
    out.rows(_limited(pager, args.limit), MS_COLUMNS)


def ms_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    # Names and bare absolute paths are both accepted by the server; pass them through.
    if len(args.names) == 1:
        out.one(client.get_measurement_set(args.names[0]))
    else:
        out.rows(client.batch_get_measurement_sets(args.names).measurement_sets, MS_COLUMNS)


def jobs_list(client: Client, args: argparse.Namespace, out: Output) -> None:
    pager = client.list_jobs(args.filter, args.order_by, _page_size(args))
    out.rows(_limited(pager, args.limit), JOB_COLUMNS)


def jobs_get(client: Client, args: argparse.Namespace, out: Output) -> None:
    out.one(client.get_job(_prefixed(names.JOBS, args.name)))


def jobs_watch(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.name:
        events = client.watch_job(_prefixed(names.JOBS, args.name), args.after_sequence)
    else:
        events = client.watch_jobs(args.filter, args.after_sequence)
    out.rows(_limited(events, args.limit), EVENT_COLUMNS, follow=True)


# --------------------------------------------------------------------------------------------
# Parser


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS defaults let these be given before or after the subcommand without the
    # subcommand's (absent) values overwriting the ones given first.
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("connection (defaults from CONTIMG_* environment variables)")
    group.add_argument("--target", default=argparse.SUPPRESS, help="host:port (CONTIMG_TARGET)")
    group.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (CONTIMG_TOKEN)")
    group.add_argument("--tls", action="store_true", default=argparse.SUPPRESS, help="use TLS, system roots")
    group.add_argument("--tls-ca", default=argparse.SUPPRESS, help="CA bundle (CONTIMG_TLS_CA)")
    group.add_argument("--tls-cert", default=argparse.SUPPRESS, help="client cert (CONTIMG_TLS_CERT)")
    group.add_argument("--tls-key", default=argparse.SUPPRESS, help="client key (CONTIMG_TLS_KEY)")
    group.add_argument("--deadline", default=argparse.SUPPRESS, help="seconds per call, 0 for none (CONTIMG_DEADLINE)")
    group.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="JSON, one per line")
    return common


def _listing(*, order: bool = True) -> argparse.ArgumentParser:
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--filter", default="", help="AIP-160 filter, e.g. 'mid_mjd >= 60900'")
    if order:
        listing.add_argument("--order-by", default="", help="e.g. 'mid_mjd desc'")
    listing.add_argument("--page-size", type=_non_negative, default=0, help="items per request")
    listing.add_argument("--limit", type=_non_negative, default=None, help="stop after N items")
    return listing


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _connection_options()
    parser = coords.ArgumentParser(  # takes -00:30:00 and -2d as values; subparsers inherit the class
        prog="contimg",
        description="Query the DSA-110 continuum imaging data products.",
        parents=[common],
        epilog="exit codes: 0 ok, 1 unexpected, 2 usage/invalid argument, 3 not found, "
        "4 unavailable/deadline, 5 other server error",
    )
    resources = parser.add_subparsers(dest="resource", required=True, metavar="RESOURCE")

    def command(group: Any, name: str, handler: Any, help: str, *extra: argparse.ArgumentParser) -> Any:
        sub = group.add_parser(name, help=help, parents=[common, *extra])
        sub.set_defaults(handler=handler)
        return sub

    def group(name: str, help: str) -> Any:
        return resources.add_parser(name, help=help).add_subparsers(required=True, metavar="COMMAND")

    images = group("images", "FITS images")
    command(images, "list", images_list, "list images", _listing(), export.options())
    command(images, "get", images_get, "show images").add_argument("names", nargs="+", metavar="NAME")
    search = command(images, "search", images_search, "images covering a position", _listing(order=False))
    search.add_argument("ra_deg", type=coords.ra_arg, help=coords.RA_FORMS)
    search.add_argument("dec_deg", type=coords.dec_arg, help=coords.DEC_FORMS)

    sources = group("sources", "radio sources")
    command(sources, "list", sources_list, "list sources", _listing())
    command(sources, "get", sources_get, "show sources").add_argument("names", nargs="+", metavar="NAME")
    search = command(sources, "search", sources_search, "cone search", _listing(order=False), export.options())
    search.add_argument("ra_deg", type=coords.ra_arg, help=coords.RA_FORMS)
    search.add_argument("dec_deg", type=coords.dec_arg, help=coords.DEC_FORMS)
    search.add_argument("radius_deg", type=coords.radius_arg, help=coords.RADIUS_FORMS)
    curve = command(sources, "lightcurve", sources_lightcurve, "a source's lightcurve", export.options(plot=True))
    curve.add_argument("name", help="sources/J083454.9+553421 or the bare designation")
    time_help = "observation time: " + times.FORMS
    curve.add_argument("--start", "--start-mjd", dest="start_mjd", type=times.time_arg, default=0.0, help=time_help)
    curve.add_argument("--end", "--end-mjd", dest="end_mjd", type=times.time_arg, default=0.0, help=time_help)
    curve.add_argument("--limit", type=_non_negative, default=None, help="stop after N points")

    ms = group("ms", "measurement sets")
    command(ms, "list", ms_list, "list measurement sets", _listing())
    command(ms, "get", ms_get, "show measurement sets (name or path)").add_argument(
        "names", nargs="+", metavar="NAME_OR_PATH"
    )

    jobs = group("jobs", "pipeline jobs")
    command(jobs, "list", jobs_list, "list jobs", _listing())
    command(jobs, "get", jobs_get, "show a job").add_argument("name")
    watch = command(jobs, "watch", jobs_watch, "follow one job (NAME) or all jobs")
    watch.add_argument("name", nargs="?", default="")
    watch.add_argument("--filter", default="", help="with no NAME: e.g. 'state = FAILED'")
    watch.add_argument("--after-sequence", type=_non_negative, default=0, help="resume after this event")
    watch.add_argument("--limit", type=_non_negative, default=None, help="stop after N events")
    from .jobs_cli import add_job_commands  # the write side; it imports this module's helpers

    add_job_commands(jobs, command)
    return parser


def _config(args: argparse.Namespace) -> ClientConfig:
    overrides: dict[str, Any] = {
        "target": getattr(args, "target", None),
        "token": getattr(args, "token", None),
        "tls": getattr(args, "tls", None),
    }
    for name in ("tls_ca", "tls_cert", "tls_key"):  # paths, as from the environment
        value = getattr(args, name, None)
        overrides[name] = Path(value).expanduser() if value else None
    config = ClientConfig.from_env(**overrides)
    if hasattr(args, "deadline"):
        config = config.replace(deadline_s=parse_deadline(args.deadline))
    # Paths are read now so that a missing file is a usage error, not a connection failure.
    if config.uses_tls:
        config.credentials()
    return config


def exit_code(error: ContimgError) -> int:
    if isinstance(error, InvalidArgumentError):
        return EXIT_USAGE
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, UnavailableError | DeadlineExceededError):
        return EXIT_UNAVAILABLE
    return EXIT_SERVER


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = _config(args)
        export.check(args)  # --format/--output/--plot: extras installed, files writable
        fmt = export.format_of(args)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    try:
        with Client(config) as client, export.destination(getattr(args, "output", None), sys.stdout) as stream:
            args.handler(client, args, Output(fmt == "json", stream, fmt))
    except ContimgError as error:
        print(f"contimg: {error}", file=sys.stderr)
        return exit_code(error)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `head`) went away: not an error. Point stdout at devnull so the
        # interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as error:
        print(f"contimg: unexpected error: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_UNEXPECTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
