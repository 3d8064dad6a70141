"""One read case of bench/run.py against two servers and the reference, interleaved: req/s, p50/p99, CPU us/call.

    git worktree add /tmp/old HEAD~1
    python bench/unary_ab.py --data-dir /tmp/b100k --case "SearchSources r=1 deg" --b-checkout /tmp/old

A is this checkout's server, B the same with --b flags or from --b-checkout (its source roots first
on PYTHONPATH). Both serve the same database (reads only), or B a copy of it (--b-data-dir: an older
checkout refuses a database a newer one migrated). Each round runs the case once against
each server and the reference (bench/reference_server.py, answering with A's reply), in that order,
so a drift in the machine's speed falls on all three; every other round runs them in reverse order,
and B/A is also given as the median of the rounds' own ratios.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import tempfile
from pathlib import Path

import h2load
import run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, required=True, help="a database seeded by bench/run.py")
    p.add_argument("--case", default="GetImage", help="a case name of bench/run.py's table")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--a", default="", help="server flags of A")
    p.add_argument("--b", default="", help="server flags of B")
    p.add_argument("--b-checkout", type=Path, help="run B's server from this checkout of the repository")
    p.add_argument("--b-data-dir", type=Path, help="B's copy of the database (default: A's)")
    args = p.parse_args()
    cases = {c.name: c for c in run.unary_cases(run.pick_targets(args.data_dir / "contimg.sqlite3"))}
    if args.case not in cases:
        raise SystemExit(f"no case {args.case!r}; one of: {', '.join(cases)}")
    case = cases[args.case]
    env_b = None
    if args.b_checkout is not None:
        roots = [str(args.b_checkout.resolve() / d) for d in ("server", "generated", "clients")]
        env_b = {**os.environ, "PYTHONPATH": os.pathsep.join([*roots, os.environ.get("PYTHONPATH", "")])}
    servers: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    responses = Path(tempfile.mkdtemp(prefix="contimg-ab-"))
    try:
        b_data = args.b_data_dir or args.data_dir
        for name, flags, env, data in (("A", args.a, None, args.data_dir), ("B", args.b, env_b, b_data)):
            port = run.free_port()
            servers[name] = (run.start(run.serve_cmd(data, port, *shlex.split(flags)), port, env=env), port)
        replies = run.raw_call(servers["A"][1], case.method, case.request, case.streaming)
        run.save_replies(responses, case, replies)
        ref_port = run.free_port()
        ref_cmd = run.reference_cmd(ref_port, responses, [case.method] if case.streaming else [])
        servers["reference"] = (subprocess.Popen(ref_cmd, stdout=subprocess.DEVNULL), ref_port)
        run._wait_port(ref_port)
        expected = sum(len(r) + 5 for r in replies)
        size = {
            name: max(200, int(h2load.run(port, case.method, case.request, seconds=1).rps * args.seconds))
            for name, (_, port) in servers.items()
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
        for r in range(args.rounds):
            # Every other round in reverse order: whoever runs first in a round is not always the same.
            order = list(servers.items()) if r % 2 == 0 else list(servers.items())[::-1]
            for name, (proc, port) in order:
                m = run.measure(port, proc.pid, case, size[name], expected)
                results[name].append(m)
                print(
                    f"round {r} {name}: {m['rps']:.0f} req/s, p99 {m['p99']:.1f} ms, {m['cpu_us']:.0f} us/call",
                    flush=True,
                )
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
    ref_rps = statistics.median(m["rps"] for m in results["reference"])
    for name, ms in results.items():
        med = {k: statistics.median(m[k] for m in ms) for k in ms[0]}
        print(
            f"{name}: {med['rps']:.0f} req/s ({med['rps'] / ref_rps:.2f}x the reference), p50 {med['p50']:.1f} ms, "
            f"p99 {med['p99']:.1f} ms, {med['cpu_us']:.0f} us/call (medians of {len(ms)})"
        )
    # Paired by round (the machine's speed drifts between rounds more than within one).
    rps = statistics.median(b["rps"] / a["rps"] for a, b in zip(results["A"], results["B"], strict=True))
    cpu = statistics.median(b["cpu_us"] / a["cpu_us"] for a, b in zip(results["A"], results["B"], strict=True))
    print(f"B/A, median of the rounds' ratios: {rps:.3f}x the req/s, {cpu:.3f}x the CPU per call")


if __name__ == "__main__":
    main()
