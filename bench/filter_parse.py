"""The filter parser's cost per filter (query.parse_filter), no server, no database.

    python bench/filter_parse.py [--module PATH] [-n 10000] [--repeat 5]

Parses each filter below `n` times, `repeat` rounds, and prints the best round's microseconds per
parse. `--module` loads another version of domain/query.py in place of the installed one, to
compare before and after a change:

    git show HEAD:server/dsa110/contimg/server/domain/query.py > /tmp/query_old.py
    python bench/filter_parse.py --module /tmp/query_old.py
    python bench/filter_parse.py

A filter the module does not support (OR and NOT before they were) prints "unsupported".
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from types import ModuleType
from typing import Any

from dsa110.contimg.server.domain import query
from dsa110.contimg.server.domain.errors import InvalidArgument
from dsa110.contimg.server.domain.listing import IMAGE_FIELDS

FILTERS = {
    "one comparison": "type = CONTINUUM",
    "AND of 3 (README)": "mid_mjd >= 60976 AND center_dec_deg > 54 AND type = CONTINUUM",
    "AND of 8": " AND ".join(
        [
            "mid_mjd >= 60976",
            "mid_mjd < 60990",
            "center_dec_deg > 54",
            "center_dec_deg <= 56",
            "noise_jy < 0.001",
            "type = CONTINUUM",
            "pbcor = true",
            'field_name = "J0834+5534"',
        ]
    ),
    "OR/NOT/parens": "(type = CONTINUUM OR type = DIRTY) AND NOT noise_jy > 0.001 AND -(pbcor = false)",
    # Refused by design: the time to say no.
    "refusal: 40 nested parens": "(" * 40 + "mid_mjd > 1" + ")" * 40,
    "refusal: 100 ORs": " OR ".join(["mid_mjd > 1"] * 100),
}


def load(path: str | None) -> ModuleType:
    if path is None:
        return query
    # A sibling of domain/query.py, so that its relative imports (.errors, .page_keys) resolve.
    spec = importlib.util.spec_from_file_location("dsa110.contimg.server.domain._query_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def image_fields(module: ModuleType) -> dict[str, Any]:
    """ListImages' fields as `module`'s own FieldSpecs (its Kind is another class than ours)."""
    return {
        name: module.FieldSpec(module.Kind(spec.kind.value), spec.sortable, spec.enum, spec.parse)
        for name, spec in IMAGE_FIELDS.items()
    }


def per_parse_us(module: ModuleType, label: str, text: str, n: int, repeat: int) -> float | None:
    parse = module.parse_filter
    fields = image_fields(module)
    try:
        parse(text, fields)
    except InvalidArgument:
        if not label.startswith("refusal"):
            return None  # a filter this version does not support
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            try:
                parse(text, fields)
            except InvalidArgument:
                pass
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", help="another domain/query.py (e.g. /tmp/query_old.py)")
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    module = load(args.module)
    print(f"{args.module or 'installed query.py'}: best of {args.repeat} x {args.n} parses")
    for label, text in FILTERS.items():
        us = per_parse_us(module, label, text, args.n, args.repeat)
        print(f"  {label:28} {'unsupported' if us is None else f'{us:8.2f} us/parse'}")


if __name__ == "__main__":
    main()
