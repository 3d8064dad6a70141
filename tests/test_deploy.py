"""deploy/systemd: the unit file and its README, checked against systemd and against the server.

* `systemd-analyze verify` reports nothing about the unit (it exits 0 even on unknown keys and bad
  values, so its output is what is checked), and `systemd-analyze security --offline` rates it as
  well sandboxed.
* Every flag on ExecStart and every CONTIMG_* variable of the README's env file example is an
  option of `contimg-server serve`, and together they make a valid configuration whose data dir is
  the unit's StateDirectory.
* TimeoutStopSec outlasts the server's own stop deadline (--grace-s + workers.STOP_MARGIN_S).
* The server (two workers, their write processes) serves, reloads on SIGHUP and drains to exit 0
  under the unit's seccomp rules (SystemCallFilter, SystemCallErrorNumber, MemoryDenyWriteExecute,
  RestrictAddressFamilies), loaded the way systemd loads them. The rest of the sandbox (mount
  namespaces, the user) needs systemd itself to run and is checked by `verify` only.

systemd-analyze and libseccomp come with systemd: without them these tests skip, except when CI is
set, where they fail.
"""

from __future__ import annotations

import argparse
import ctypes.util
import dataclasses
import errno
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from dsa110.contimg.client import AsyncClient, ClientConfig
from dsa110.contimg.server import config as server_config
from dsa110.contimg.server.workers import STOP_MARGIN_S
from dsa110.contimg.v1.images_pb2 import Image
from dsa110.contimg.v1.measurement_sets_pb2 import MeasurementSet
from dsa110.contimg.v1.sources_pb2 import PhotometryMeasurement

from conftest import free_port
from helpers_stress import CONSOLE_SCRIPT, ServerProcess, alive, child_pids, until, write_processes_under

ROOT = Path(__file__).resolve().parents[1]
UNIT_PATH = ROOT / "deploy" / "systemd" / "contimg-server.service"
UNIT = UNIT_PATH.read_text()
DEPLOY_README = (ROOT / "deploy" / "systemd" / "README.md").read_text()
MAX_EXPOSURE = 2.0  # systemd-analyze security's 0-10 scale; the unit rates 1.2


def require(what: str, found: bool) -> None:
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing, and CI is set: the unit must be checked there")
    pytest.skip(f"{what} is not installed")


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    require("systemd-analyze", path is not None)
    assert path is not None
    return path


def settings(text: str, section: str = "Service") -> dict[str, list[str]]:
    """Each key of a unit file section with its values in order (a key may be given more than once)."""
    found: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"continued lines are not parsed here: {line}"
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def setting(key: str, section: str = "Service") -> str:
    (value,) = settings(UNIT, section)[key]
    return value


def exec_start() -> list[str]:
    return shlex.split(setting("ExecStart"))


def env_example() -> str:
    (block,) = re.findall(r"^```ini\n(.*?)^```$", DEPLOY_README, re.MULTILINE | re.DOTALL)
    return str(block)


def unit_config() -> server_config.ServerConfig:
    """The configuration the unit gives the server: ExecStart's flags over the env file example."""
    parser = argparse.ArgumentParser()
    server_config.add_arguments(parser)
    args = parser.parse_args(exec_start()[2:])
    environ = {}
    for line in env_example().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            environ[key.strip()] = value.strip()
    return server_config.from_sources(args, environ)


def seconds(timespan: str) -> float:
    """A systemd time span of the forms the unit may use: 45, 45s, 1min, 1min 30s."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60}
    parts = re.fullmatch(r"(?:\s*\d+\s*(?:min|sec|s)?)+", timespan)
    assert parts, f"TimeoutStopSec={timespan}: not parsed here"
    return float(sum(int(n) * units[u] for n, u in re.findall(r"(\d+)\s*(min|sec|s)?", timespan)))


# ---------------------------------------------------------------------------------------------
# systemd-analyze


def verifiable_copy(directory: Path, text: str = UNIT) -> Path:
    """The unit with ExecStart's binary replaced by this virtualenv's contimg-server: verify checks
    that the binary exists, and /opt/contimg/venv does not exist here."""
    binary = exec_start()[0]
    assert binary.endswith("/contimg-server") and text.count(binary) == 1, binary
    copy = directory / UNIT_PATH.name
    copy.write_text(text.replace(binary, str(CONSOLE_SCRIPT)))
    return copy


def verify(unit: Path) -> list[str]:
    """What `systemd-analyze verify` says about `unit` (its exit status is 0 even for unknown keys)."""
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if unit.name in line] + ([f"exit status {result.returncode}"] * result.returncode)


def test_systemd_analyze_verify_reports_nothing(tmp_path: Path) -> None:
    assert verify(verifiable_copy(tmp_path)) == []


def test_systemd_analyze_verify_would_report_a_broken_unit(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a bad value are reported, each naming the unit."""
    broken = UNIT.replace("ProtectSystem=strict", "ProtectSytem=strict").replace(
        "KillMode=control-group", "KillMode=control-grup"
    )
    assert broken != UNIT
    said = "\n".join(verify(verifiable_copy(tmp_path, broken)))
    assert "ProtectSytem" in said and "control-grup" in said, said


def test_systemd_analyze_security_rates_the_unit_well_sandboxed(tmp_path: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "security", "--offline=true", str(verifiable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in result.stderr and not os.environ.get("CI"):
        pytest.skip(f"this systemd-analyze has no --offline (systemd < 250): {result.stderr.strip()}")
    found = re.search(r"Overall exposure level for contimg-server\.service: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found[1]) <= MAX_EXPOSURE, result.stdout


# ---------------------------------------------------------------------------------------------
# The unit against the server's options


def test_execstart_flags_and_the_env_example_are_server_options() -> None:
    command = exec_start()
    assert command[1] == "serve", command
    help_text = subprocess.run(
        [str(CONSOLE_SCRIPT), "serve", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    options = set(re.findall(r"--[a-z0-9][a-z0-9-]*", help_text))
    flags = [arg.split("=")[0] for arg in command[2:] if arg.startswith("--")]
    assert flags and set(flags) <= options, set(flags) - options

    variables = set(re.findall(r"\bCONTIMG_[A-Z0-9_]+", env_example()))  # commented-out ones too
    known = {server_config.env_name(f.name) for f in dataclasses.fields(server_config.ServerConfig)}
    assert variables and variables <= known, variables - known

    # Together they are a configuration the server accepts (from_sources exits on a bad value),
    # whose database is in the directory systemd makes for it and lets it write.
    config = unit_config()
    assert config.data_dir == Path("/var/lib") / setting("StateDirectory")
    assert str(config.data_dir) in setting("ReadWritePaths").split()
    assert setting("EnvironmentFile").lstrip("-") in DEPLOY_README


def test_stop_timeout_outlasts_the_servers_own_deadline() -> None:
    """systemd's SIGKILL must come after the parent's (at --grace-s + STOP_MARGIN_S), so that a
    slow drain ends with the server's own error line and exit status, not an unexplained kill."""
    timeout = seconds(setting("TimeoutStopSec"))
    assert timeout > server_config.ServerConfig().grace_s + STOP_MARGIN_S
    assert timeout > unit_config().grace_s + STOP_MARGIN_S


# ---------------------------------------------------------------------------------------------
# The server under the unit's seccomp rules


def syscall_groups() -> dict[str, list[str]]:
    """systemd's @groups, as this systemd defines them (members may be groups)."""
    out = subprocess.run([systemd_analyze(), "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith(" ") and current is not None:
            if not line.strip().startswith("#"):  # a group's description
                current.append(line.strip())
        else:  # a blank line ends a group; "# Ungrouped" lists calls of no group
            current = None
    return groups


def allowed_syscalls(service: dict[str, list[str]]) -> list[str]:
    """SystemCallFilter= as systemd reads it: the first line sets allow-list mode (which always
    includes @default), then each line adds to the list, or removes from it with ~."""
    groups = syscall_groups()

    def expand(names: str) -> set[str]:
        out: set[str] = set()
        for name in names.split():
            out |= set().union(*(expand(m) for m in groups[name])) if name.startswith("@") else {name}
        return out

    lines = service["SystemCallFilter"]
    assert not lines[0].startswith("~"), "the unit allow-lists"
    allowed = expand("@default")
    for line in lines:
        if line.startswith("~"):
            allowed -= expand(line[1:])
        else:
            allowed |= expand(line)
    return sorted(allowed)


def sandbox_spec() -> dict[str, Any]:
    service = settings(UNIT)
    (errno_name,) = service["SystemCallErrorNumber"]
    (families,) = service["RestrictAddressFamilies"]
    return {
        "allow": allowed_syscalls(service),
        "errno": int(getattr(errno, errno_name)),
        "mdwe": service.get("MemoryDenyWriteExecute") == ["yes"],
        "families": [int(getattr(socket, name)) for name in families.split()],
    }


def _exec_sandboxed() -> None:  # runs in a `python -c` of its own (below): imports nothing from the tests
    """argv: SPEC PROGRAM ARG...: load the unit's seccomp filters as systemd does, then exec PROGRAM.

    One filter per setting, as systemd loads them: the kernel runs every filter and the strictest
    answer wins. The allow-list goes last, because loading a filter is a call it does not allow."""
    import ctypes
    import ctypes.util
    import errno
    import json
    import os
    import sys

    spec = json.loads(sys.argv[1])
    lib = ctypes.CDLL(ctypes.util.find_library("seccomp"))

    class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
        _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]

    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(Cmp),
    ]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    allow = 0x7FFF0000  # SCMP_ACT_ALLOW
    masked_eq, eq, ge = 7, 4, 5  # enum scmp_compare

    def refuse(number: int) -> int:  # SCMP_ACT_ERRNO
        return 0x00050000 | number

    def load(default: int, rules: list[tuple[str, int, list[tuple[int, int, int, int]]]]) -> None:
        ctx = lib.seccomp_init(default)  # its NO_NEW_PRIVS attribute is on: as NoNewPrivileges=yes
        for name, action, conditions in rules:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:  # not a call of this architecture (chown32, ...)
                continue
            array = (Cmp * max(1, len(conditions)))(*(Cmp(*c) for c in conditions))
            if lib.seccomp_rule_add_array(ctx, action, number, len(conditions), array) != 0:
                raise SystemExit(f"seccomp_rule_add {name} failed")
        if lib.seccomp_load(ctx) != 0:
            raise SystemExit("seccomp_load failed")
        lib.seccomp_release(ctx)

    if spec["mdwe"]:  # systemd's MemoryDenyWriteExecute= rules (seccomp-util.c)
        wx, x, shm_exec = 0x2 | 0x4, 0x4, 0o100000
        load(
            allow,
            [
                ("mmap", refuse(errno.EPERM), [(2, masked_eq, wx, wx)]),
                ("mprotect", refuse(errno.EPERM), [(2, masked_eq, x, x)]),
                ("pkey_mprotect", refuse(errno.EPERM), [(2, masked_eq, x, x)]),
                ("shmat", refuse(errno.EPERM), [(2, masked_eq, shm_exec, shm_exec)]),
            ],
        )
    af_max = 46  # RestrictAddressFamilies=: socket() of any other family fails with EAFNOSUPPORT
    refused = [(0, eq, f, 0) for f in range(af_max) if f not in spec["families"]] + [(0, ge, af_max, 0)]
    load(allow, [("socket", refuse(errno.EAFNOSUPPORT), [condition]) for condition in refused])
    load(refuse(spec["errno"]), [(name, allow, []) for name in spec["allow"]])
    os.execv(sys.argv[2], sys.argv[2:])


def sandboxed(command: list[str]) -> list[str]:
    require("libseccomp", ctypes.util.find_library("seccomp") is not None)
    launcher = inspect.getsource(_exec_sandboxed) + "\n_exec_sandboxed()\n"
    return [sys.executable, "-c", launcher, json.dumps(sandbox_spec()), *command]


PROBE = """
import errno, json, mmap, os, socket
def code(call):
    try:
        call()
        return 0
    except OSError as exc:
        return exc.errno
print(json.dumps({
    "wx_mmap": code(lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)),
    "netlink": code(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close()),
    "inet6": code(lambda: socket.socket(socket.AF_INET6).close()),
    "setpriority": code(lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0))),
}))
"""


def test_the_sandbox_refuses_what_the_unit_refuses() -> None:
    """The simulation is in force: W+X memory, a netlink socket and a @resources call are refused,
    with the errors systemd gives; an allowed family still works."""
    result = subprocess.run(sandboxed([sys.executable, "-c", PROBE]), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "wx_mmap": errno.EPERM,
        "netlink": errno.EAFNOSUPPORT,
        "inet6": 0,
        "setpriority": errno.EPERM,
    }


class SandboxedServer(ServerProcess):
    def command(self, port: int) -> list[str]:
        return sandboxed(super().command(port))


def seccomp_filters(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Seccomp_filters:"):
            return int(line.split()[1])
    raise AssertionError("no Seccomp_filters line")


async def test_the_server_runs_under_the_units_seccomp_rules(tmp_path: Path) -> None:
    token, second = "unit-write-token-1", "unit-write-token-2"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"write deploy-test {token}\n")
    args = ["--workers", "2", "--tokens-file", str(tokens), "--synchronous", "NORMAL"]
    server = SandboxedServer(tmp_path, args=args, port=free_port())
    await server.start()
    workers: list[int] = []
    try:
        workers = child_pids(server.pid)
        assert len(workers) == 2, server.log_tail()
        expected = 3 if sandbox_spec()["mdwe"] else 2
        assert all(seccomp_filters(pid) == expected for pid in [server.pid, *workers])

        # Writes, photometry through a write process (a `python -m` exec'ed under the filters), a read.
        async with AsyncClient(ClientConfig(target=server.target, token=token)) as client:
            ms = await client.update_measurement_set(
                MeasurementSet(path="/stage/ms/unit.ms", mid_mjd=60976.56, pointing_dec_deg=54.57), allow_missing=True
            )
            image = await client.create_image(
                Image(
                    path="/stage/images/unit.fits",
                    measurement_set=ms.name,
                    center_ra_deg=128.7,
                    center_dec_deg=54.57,
                    size_x_px=64,
                    size_y_px=64,
                    cell_size_arcsec=2.0,
                    noise_jy=0.0006,
                    type=Image.TYPE_CONTINUUM,
                )
            )
            measured = [
                PhotometryMeasurement(
                    source=f"sources/J0834{n:02d}+5534",
                    ra_deg=128.7,
                    dec_deg=55.57,
                    peak_flux_jy=1.0 + n,
                    peak_flux_err_jy=0.1,
                )
                for n in range(20)
            ]
            await client.record_photometry(image.name, measured)
            assert (await client.list_images()).total_size == 1
        await until(lambda: all(write_processes_under(w) for w in workers), "a write process in each worker")
        assert all(seccomp_filters(p) == expected for w in workers for p in write_processes_under(w))

        # SIGHUP (ExecReload) reaches both workers, which read the file again.
        tokens.write_text(f"write deploy-test {token}\nwrite deploy-test-2 {second}\n")
        os.kill(server.pid, signal.SIGHUP)
        await until(lambda: server.log_path.read_text().count("tokens reloaded") == 2, "SIGHUP in both workers")
        async with AsyncClient(ClientConfig(target=server.target, token=second)) as client:
            await client.update_measurement_set(
                MeasurementSet(path="/stage/ms/unit-2.ms", mid_mjd=60976.57, pointing_dec_deg=54.57), allow_missing=True
            )
    finally:
        status = server.terminate(timeout=server_config.ServerConfig().grace_s + STOP_MARGIN_S)
    assert status == 0, server.log_tail()
    assert not any(alive(pid) for pid in workers)
    log = server.log_path.read_text()
    # A refused call fails with EPERM rather than killing: it would show as an error, not a crash.
    assert "Traceback" not in log and "not permitted" not in log, server.log_tail()
