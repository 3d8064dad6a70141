"""Listings as files astronomy tools read: `--format csv|votable` and `--output FILE` of the CLI.

The columns are every scalar field of the listed message, flattened: nested messages add their
fields with the parent's name as a prefix (`qa_grade`), except a search match's `source` / `image`
and a source's `variability`, whose fields keep their own names (`ra_deg`, `eta`: the names the
filters use). Repeated and map fields are left out. Values are the raw ones, in the units their
names end with (`_jy` Jy or Jy/beam, `_deg`, `_mjd` MJD days, ...), never rounded: CSV writes
floats with Python's shortest round-trip repr. Enums are their short names (`CONTINUUM`, as the
filters and the table write them), timestamps RFC 3339 strings as in JSON.

VOTable needs astropy (the `science` extra); it carries each column's unit and, for positions
and times, a UCD, so TOPCAT and Aladin find the coordinates by themselves. A lightcurve's VOTable
also holds its source and the source's variability statistics as PARAMs.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

__all__ = [
    "FILE_FORMATS",
    "FORMATS",
    "Field",
    "Listing",
    "MissingExtraError",
    "check",
    "destination",
    "enum_label",
    "fields",
    "format_of",
    "options",
    "require",
    "summary",
    "to_csv",
    "to_table",
    "to_votable",
    "value",
]

FORMATS = ("table", "json", "csv", "votable")
FILE_FORMATS = ("csv", "votable")
EXTRA = "science"

# Nested messages whose fields keep their own names.
_UNPREFIXED = frozenset({"source", "image", "variability"})
# Fluxes per beam (the rest of `_jy` is integrated, Jy).
_PER_BEAM = frozenset(
    {"peak_flux_jy", "peak_flux_err_jy", "noise_jy", "local_rms_jy", "qa_peak_flux_jy"}
    | {"mean_flux_jy", "std_flux_jy", "min_flux_jy", "max_flux_jy"}
)
_SUFFIX_UNITS = (
    ("_mjd", "d"),
    ("_deg", "deg"),
    ("_arcsec", "arcsec"),
    ("_mjy", "mJy"),
    ("_jy", "Jy"),
    ("_ghz", "GHz"),
    ("_mhz", "MHz"),
    ("_px", "pix"),
    ("_s", "s"),
)
_UCDS = {
    "name": "meta.id;meta.main",
    "ra_deg": "pos.eq.ra;meta.main",
    "dec_deg": "pos.eq.dec;meta.main",
    "center_ra_deg": "pos.eq.ra;meta.main",
    "center_dec_deg": "pos.eq.dec;meta.main",
    "separation_deg": "pos.angDistance",
    "peak_flux_jy": "phot.flux.density",
    "peak_flux_err_jy": "stat.error;phot.flux.density",
    "integrated_flux_jy": "phot.flux.density",
    "integrated_flux_err_jy": "stat.error;phot.flux.density",
    "noise_jy": "instr.skyLevel;stat.stdev",
    "snr": "stat.snr",
}
_FLOATS = (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)
_INTS = {
    FieldDescriptor.CPPTYPE_INT32: "int32",
    FieldDescriptor.CPPTYPE_UINT32: "uint32",
    FieldDescriptor.CPPTYPE_INT64: "int64",
    FieldDescriptor.CPPTYPE_UINT64: "uint64",
}


class MissingExtraError(ValueError):
    """An optional dependency is not installed."""


def require(module: str, purpose: str) -> Any:
    """Imports `module` (e.g. `astropy.table`) or says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".", 1)[0]
        raise MissingExtraError(
            f"{purpose} needs {top}, which is not installed: pip install 'contimg-grpc[{EXTRA}]'"
        ) from None


# --------------------------------------------------------------------------------------------
# Columns


@dataclass(frozen=True)
class Field:
    """One column: its name, the field path from the listed message, what it holds, its unit."""

    name: str
    path: tuple[str, ...]
    kind: str  # "float", "int32", "int64", "uint32", "uint64", "bool", "str", "enum", "time"
    unit: str | None = None
    ucd: str | None = None


def _unit(name: str) -> str | None:
    if name in _PER_BEAM:
        return "Jy/beam"
    for suffix, unit in _SUFFIX_UNITS:
        if name.endswith(suffix):
            return unit
    return None


def _ucd(name: str) -> str | None:
    if name.endswith("_mjd"):
        return "time.epoch"
    return _UCDS.get(name)


def fields(message_type: type[Message]) -> list[Field]:
    """The columns of a message type (see the module docstring)."""
    descriptor: Any = message_type.DESCRIPTOR
    found = list(_fields(descriptor, (), ""))
    names = [f.name for f in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:  # a new nested field would make two columns of one name
        raise AssertionError(f"{descriptor.full_name}: columns {duplicates} appear twice")
    return found


def _fields(descriptor: Any, path: tuple[str, ...], prefix: str) -> Iterator[Field]:
    for field in descriptor.fields:
        if field.is_repeated:  # also maps
            continue
        name = prefix + field.name
        where = (*path, field.name)
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                yield Field(name, where, "time")
            else:
                inner = prefix if field.name in _UNPREFIXED else name + "_"
                yield from _fields(field.message_type, where, inner)
        elif field.cpp_type == FieldDescriptor.CPPTYPE_ENUM:
            yield Field(name, where, "enum", ucd=_ucd(name))
        elif field.cpp_type in _FLOATS:
            yield Field(name, where, "float", _unit(name), _ucd(name))
        elif field.cpp_type in _INTS:
            yield Field(name, where, _INTS[field.cpp_type], _unit(name), _ucd(name))
        elif field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
            yield Field(name, where, "bool")
        elif field.type == FieldDescriptor.TYPE_STRING:
            yield Field(name, where, "str", ucd=_ucd(name))
        # bytes: nothing a table tool could show


def enum_label(message: Message, field: str) -> str:
    """`CONTINUUM` for Image.TYPE_CONTINUUM (the prefix repeats the field); a number the client
    does not know (a newer server's value) is shown as that number."""
    number = getattr(message, field)
    descriptor = message.DESCRIPTOR.fields_by_name[field].enum_type
    value = descriptor.values_by_number.get(number) if descriptor else None
    if value is None:
        return str(number)
    return value.name.split("_", 1)[-1]


def value(item: Message, field: Field) -> Any:
    """The value of one column in one item, as a Python scalar."""
    message = item
    for part in field.path[:-1]:
        message = getattr(message, part)
    last = field.path[-1]
    if field.kind == "enum":
        return enum_label(message, last)
    if field.kind == "time":
        stamp = getattr(message, last)
        return stamp.ToJsonString() if message.HasField(last) else ""
    return getattr(message, last)


# --------------------------------------------------------------------------------------------
# Writers


def _csv_cell(cell: Any) -> str:
    if isinstance(cell, float):
        return repr(cell)
    return str(cell)


def to_csv(items: Iterable[Message], columns: Sequence[Field], stream: TextIO) -> int:
    """A header row, then one row per item, streamed; returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    count = 0
    for item in items:
        writer.writerow([_csv_cell(value(item, c)) for c in columns])
        count += 1
    return count


def to_table(items: Iterable[Message], columns: Sequence[Field]) -> Any:
    """An astropy Table of the items, with units."""
    np = require("numpy", "--format votable")
    table_module = require("astropy.table", "--format votable")
    rows = list(items)
    table = table_module.Table()
    for column in columns:
        cells = [value(item, column) for item in rows]
        if column.kind == "float":
            data = np.array(cells, dtype=np.float64)
        elif column.kind in ("int32", "int64", "uint32", "uint64"):
            data = np.array(cells, dtype=column.kind)
        elif column.kind == "bool":
            data = np.array(cells, dtype=bool)
        else:
            data = np.array(cells, dtype=str) if cells else np.array([], dtype="U1")
        table[column.name] = table_module.Column(data, unit=column.unit)
        if column.ucd:
            table[column.name].meta["ucd"] = column.ucd
    return table


def to_votable(
    items: Iterable[Message], columns: Sequence[Field], stream: TextIO, *, about: Message | None = None
) -> int:
    """A VOTable 1.4 document (TABLEDATA); `about`'s scalar fields become PARAMs (`source_` before
    a name a column has). Returns the number of rows."""
    table = to_table(items, columns)
    votable_module = require("astropy.io.votable", "--format votable")
    tree = require("astropy.io.votable.tree", "--format votable")
    document = votable_module.from_table(table)
    resource_table = document.get_first_table()
    if about is not None:
        taken = {c.name for c in columns}
        for field in fields(type(about)):
            # A PARAM named like a column (a lightcurve's source has ra_deg too) gets a prefix.
            name = f"source_{field.name}" if field.name in taken else field.name
            resource_table.params.append(_param(tree, document, field, name, value(about, field)))
    buffer = io.BytesIO()
    document.to_xml(buffer)
    stream.write(buffer.getvalue().decode("utf-8"))
    stream.flush()
    return len(table)


def _param(tree: Any, document: Any, field: Field, name: str, cell: Any) -> Any:
    if field.kind == "float":
        datatype, text = "double", repr(float(cell))
    elif field.kind in ("int32", "uint32"):
        datatype, text = "int", str(cell)
    elif field.kind in ("int64", "uint64"):
        datatype, text = "long", str(cell)
    elif field.kind == "bool":
        datatype, text = "boolean", "T" if cell else "F"
    else:
        datatype, text = "char", str(cell)
    arraysize = "*" if datatype == "char" else None
    return tree.Param(
        document,
        name=name,
        datatype=datatype,
        arraysize=arraysize,
        value=text,
        unit=field.unit,
        ucd=field.ucd,
    )


# --------------------------------------------------------------------------------------------
# Table footers


class Listing:
    """What a command lists, limited to `limit` items, with the listing's total when it has one
    (a pager's `total_size`: the items matching, across all pages)."""

    def __init__(self, items: Iterable[Any], limit: int | None) -> None:
        self.source = items
        self.limit = limit

    def __iter__(self) -> Iterator[Any]:
        iterator = iter(self.source)
        if self.limit is None:
            return iterator
        return (item for _, item in zip(range(self.limit), iterator, strict=False))

    @property
    def total(self) -> int | None:
        total = getattr(self.source, "total_size", None)
        return total if isinstance(total, int) else None


def summary(count: int, total: int | None) -> str:
    """`no results`, `3 results`, or `5 of 2000 results` (the total when it says more)."""
    if count == 0:
        return "no results"
    noun = "result" if (total or count) == 1 else "results"
    if total is not None and total > count:
        return f"{count} of {total} {noun}"
    return f"{count} {noun}"


# --------------------------------------------------------------------------------------------
# Command-line options


def options(*, plot: bool = False) -> argparse.ArgumentParser:
    """`--format` and `--output` (and `--plot` for a lightcurve) for a listing command."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="table (default), json (one object per line, as --json), csv (header row), "
        f"votable (XML with units, for TOPCAT and Aladin; needs the {EXTRA} extra)",
    )
    group.add_argument("--output", "-o", metavar="FILE", default=None, help="write there instead of stdout")
    if plot:
        group.add_argument(
            "--plot",
            metavar="FILE.png",
            default=None,
            help=f"also draw the lightcurve (flux with error bars against MJD) to a PNG (needs the {EXTRA} extra)",
        )
    return parent


def format_of(args: argparse.Namespace) -> str:
    """The output format: `--format`, else `json` for `--json`, else `table`."""
    chosen = getattr(args, "format", None)
    as_json = bool(getattr(args, "json", False))
    if chosen and as_json and chosen != "json":
        raise ValueError(f"--json and --format {chosen} disagree: give one of them")
    return str(chosen or ("json" if as_json else "table"))


def check(args: argparse.Namespace) -> None:
    """Before any call: the format's and --plot's extras are installed and the files writable
    (ValueError or OSError otherwise, which the CLI reports as usage errors)."""
    fmt = format_of(args)
    if fmt == "votable":
        require("astropy.io.votable", "--format votable")
    plot = getattr(args, "plot", None)
    if plot:
        require("matplotlib", "--plot")
    for option, path in (("--output", getattr(args, "output", None)), ("--plot", plot)):
        if path and path != "-":
            _writable(option, Path(path))
    if plot and getattr(args, "output", None) and Path(plot).resolve() == Path(args.output).resolve():
        raise ValueError("--plot and --output name the same file")


def _writable(option: str, path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{option} {path}: directory {parent} is not writable")


@contextlib.contextmanager
def destination(path: str | os.PathLike[str] | None, default: TextIO | None = None) -> Iterator[TextIO]:
    """`default` (stdout) when no path; else a temporary file beside `path` that replaces it only
    when the block succeeds, so a failed call never leaves a truncated table behind."""
    if path is None or str(path) == "-":
        yield default if default is not None else sys.stdout
        return
    target = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with open(descriptor, "w", encoding="utf-8", newline="") as stream:
            yield stream
        os.chmod(temporary, 0o666 & ~_umask())  # as open() would have made it, not mkstemp's 0600
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
