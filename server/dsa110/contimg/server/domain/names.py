"""Resource names (AIP-122): parsing and formatting in one place."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import quote, unquote

from .errors import InvalidArgument

MAX_PATH_LEN = 1024
_SOURCE_ID = re.compile(r"^[A-Za-z0-9+\-._]{1,64}\Z")
_JOB_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}\Z")
_IMAGE_ID = re.compile(r"^[1-9][0-9]{0,17}\Z")


def ms_name(path: str) -> str:
    return "measurementSets/" + quote(path, safe="")


def image_name(image_id: int) -> str:
    return f"images/{image_id}"


def source_name(source_id: str) -> str:
    return f"sources/{source_id}"


def job_name(job_id: str) -> str:
    return f"jobs/{job_id}"


def check_path(path: str, field: str) -> str:
    """An absolute file-system path: what MS, image and calibration table paths must look like."""
    if not path:
        raise InvalidArgument.single(field, "required")
    if len(path) > MAX_PATH_LEN:
        raise InvalidArgument.single(field, f"longer than {MAX_PATH_LEN} characters")
    if not path.startswith("/"):
        raise InvalidArgument.single(field, "must be an absolute path starting with '/'")
    if any(ord(c) < 32 or c == "\x7f" for c in path):
        raise InvalidArgument.single(field, "must not contain control characters")
    if path == "/" or posixpath.normpath(path) != path or path.startswith("//"):
        # One file, one spelling: '/a//b.ms', '/a/./b.ms' and '/a/b.ms/' would be other resources.
        raise InvalidArgument.single(
            field, "must be a normalized path naming a file (no '//', '.', '..' or trailing '/')"
        )
    return path


def parse_ms_name(name: str, field: str = "name") -> str:
    """`measurementSets/{percent-encoded path}` or a bare absolute path -> the MS path."""
    if name.startswith("/"):
        return check_path(name, field)
    prefix = "measurementSets/"
    if not name.startswith(prefix) or len(name) == len(prefix):
        raise InvalidArgument.single(field, "must be 'measurementSets/{percent-encoded path}' or an absolute path")
    encoded = name[len(prefix) :]
    if "/" in encoded:
        raise InvalidArgument.single(field, "the MS path must be percent-encoded ('/' as %2F)")
    try:
        path = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        raise InvalidArgument.single(field, "percent-encoding is not valid UTF-8") from None
    return check_path(path, field)


def parse_image_name(name: str, field: str = "name") -> int:
    prefix = "images/"
    if not name.startswith(prefix) or not _IMAGE_ID.match(name[len(prefix) :]):
        raise InvalidArgument.single(field, "must be 'images/{positive integer id}'")
    value = int(name[len(prefix) :])
    if value >= 2**63:
        raise InvalidArgument.single(field, "image id out of range")
    return value


def check_source_id(source_id: str, field: str) -> str:
    if not _SOURCE_ID.match(source_id):
        raise InvalidArgument.single(field, "source id must be 1-64 characters of A-Z a-z 0-9 + - . _")
    return source_id


_SOURCE_NAME = re.compile(r"sources/([A-Za-z0-9+\-._]{1,64})\Z")


def source_id_or_none(name: str) -> str | None:
    """The id in a well-formed source name, else None (no error built: for per-row fast paths)."""
    found = _SOURCE_NAME.match(name)
    return found.group(1) if found else None


def parse_source_name(name: str, field: str = "name") -> str:
    prefix = "sources/"
    if not name.startswith(prefix):
        raise InvalidArgument.single(field, "must be 'sources/{source_id}'")
    return check_source_id(name[len(prefix) :], field)


def check_job_id(job_id: str, field: str) -> str:
    if not _JOB_ID.match(job_id):
        raise InvalidArgument.single(field, "job id must be 1-63 characters of a-z 0-9 - starting with a letter")
    return job_id


def parse_job_name(name: str, field: str = "name") -> str:
    prefix = "jobs/"
    if not name.startswith(prefix):
        raise InvalidArgument.single(field, "must be 'jobs/{job_id}'")
    return check_job_id(name[len(prefix) :], field)


def check_artifact(value: str, field: str) -> str:
    """A job's output: an absolute path, or the name of a resource of this API (`images/42`)."""
    if value.startswith("/"):
        return check_path(value, field)
    for prefix, parse in _ARTIFACT_NAMES:
        if value.startswith(prefix):
            parse(value, field)
            return value
    raise InvalidArgument.single(field, "must be a resource name (e.g. 'images/42') or an absolute path")


_ARTIFACT_NAMES = (
    ("images/", parse_image_name),
    ("measurementSets/", parse_ms_name),
    ("sources/", parse_source_name),
    ("jobs/", parse_job_name),
)
