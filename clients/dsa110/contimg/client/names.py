"""Resource names of the contimg API (`images/42`, `measurementSets/%2Fstage%2F...ms`, ...)."""

from __future__ import annotations

from urllib.parse import quote, unquote

IMAGES = "images/"
MEASUREMENT_SETS = "measurementSets/"
SOURCES = "sources/"
JOBS = "jobs/"


def ms_name(path: str) -> str:
    """`/stage/ms/a:b.ms` -> `measurementSets/%2Fstage%2Fms%2Fa%3Ab.ms`.

    quote() with no safe characters leaves exactly RFC 3986's unreserved set (A-Z a-z 0-9 - . _ ~)
    unescaped, which is the server's canonical form, so names compare equal as strings.
    """
    return MEASUREMENT_SETS + quote(path, safe="")


def ms_path(name: str) -> str:
    """Inverse of ms_name; a bare absolute path is returned unchanged."""
    if name.startswith("/"):
        return name
    return unquote(_strip(name, MEASUREMENT_SETS))


def image_name(image_id: int | str) -> str:
    """`42` or `images/42` -> `images/42` (an id never contains `/`, so a name passes through)."""
    return _prefixed(IMAGES, str(image_id))


def image_id(name: str) -> int:
    return int(_strip(name, IMAGES))


def source_name(source_id: str) -> str:
    """`J083454.9+553421` (a bare designation) or `sources/J083454.9+553421` -> the resource name."""
    return _prefixed(SOURCES, source_id)


def source_id(name: str) -> str:
    return _strip(name, SOURCES)


def job_name(job_id: str) -> str:
    return JOBS + job_id


def job_id(name: str) -> str:
    return _strip(name, JOBS)


def _prefixed(prefix: str, name: str) -> str:
    return name if name.startswith(prefix) else prefix + name


def named(prefix: str, name: str) -> str:
    """What the clients send for a resource name argument: `name` with `prefix` added when the
    caller gave a bare id (as the CLI accepts); an empty name stays empty (the server says it is
    required)."""
    return _prefixed(prefix, name) if name else name


def _strip(name: str, prefix: str) -> str:
    if not name.startswith(prefix) or len(name) == len(prefix):
        raise ValueError(f"{name!r} is not a {prefix}{{id}} resource name")
    return name[len(prefix) :]
