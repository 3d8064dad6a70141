"""--workers N: fork N server processes on one port before any gRPC object exists.

The kernel spreads connections over the workers (SO_REUSEPORT). The parent serves nothing: it
holds the port's claim (portclaim.py; the workers drop their copy), forwards SIGTERM and SIGINT to
the workers, and reaps them.

What the parent and the workers do when one of them goes:

* The parent dies, whatever kills it (SIGKILL and the OOM killer included): every worker gets
  SIGTERM from the kernel (prctl PR_SET_PDEATHSIG, set right after fork) and drains as it would for
  a forwarded SIGTERM: health NOT_SERVING, in-flight calls get --grace-s, storage closes, and its
  write process exits when the worker's socket closes. So a restart finds the port free once the
  drain is over, instead of beside orphaned workers. Backstop: a thread in each worker reads a pipe
  whose only write end is the parent's; at end of file it waits --grace-s + 20 s and then SIGKILLs
  its own process, so a worker wedged in its drain does not keep the port. (Elsewhere than Linux
  that thread sends the SIGTERM too.)
* A worker exits while nobody asked it to (a crash, the OOM killer, a failed start): the parent logs
  it, sends SIGTERM to the others, waits for their drain, and exits with the worker's status (1 if
  that was 0, 128+N for signal N), so that a supervisor (systemd Restart=on-failure, Kubernetes)
  restarts the whole service, and sees and rate-limits a crash loop. We chose this over forking a
  replacement in the parent: a worker failing at start (database unreadable, port taken) would be
  respawned forever, and serving on with fewer workers would halve capacity unnoticed.
* SIGTERM or SIGINT to the parent: forwarded; the parent exits 0 once every worker has exited 0.
* SIGHUP to the parent: forwarded (each worker reloads its tokens).
* Stopping takes longer than --grace-s + 20 s: the parent SIGKILLs the workers left and exits 1.

The parent waits for signals synchronously (sigtimedwait on SIGCHLD, SIGTERM, SIGINT, blocked from
before the first fork), so no signal is lost between forks and no Python handler is inherited.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import NoReturn

from . import metrics_endpoint
from .config import ServerConfig
from .portclaim import PortClaim

log = logging.getLogger("contimg.workers")

STOP_MARGIN_S = 20.0  # beyond --grace-s: storage close (the write process gets 10 s), redis, exit
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT})
# Passed on to every worker (SIGHUP: reload the tokens file). A worker keeps it blocked until its
# server has a handler for it (app.serve): its default action would end the worker.
_FORWARDED = frozenset({signal.SIGHUP})
_WATCHED = _STOP_SIGNALS | _FORWARDED | {signal.SIGCHLD}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def run_workers(config: ServerConfig, serve_one: Callable[[], None], claim: PortClaim | None = None) -> NoReturn:
    """Fork first (gRPC must not exist in the parent), then supervise until every worker has exited."""
    if config.port == 0:
        raise SystemExit("--workers needs a fixed --port")
    limit_s = config.grace_s + STOP_MARGIN_S
    die_with_parent = _parent_death_signal()  # loads libc here, not in each child
    parent = os.getpid()
    watch_r, watch_w = os.pipe()  # the parent keeps watch_w open until it dies, and never writes
    signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    # --metrics-port: the workers write their values to files, which this process serves (metrics_endpoint.py).
    metrics_dir = metrics_endpoint.prepare_workers() if config.metrics_port else ""
    children: dict[int, int] = {}
    failed = False
    for number in range(config.workers):
        try:
            pid = os.fork()
        except OSError as exc:
            log.error("could not fork worker %d: %s", number, exc)
            failed = True
            break
        if pid == 0:
            status = _worker(parent, die_with_parent, watch_r, watch_w, claim, limit_s, serve_one)
            os._exit(status)
        children[pid] = number
    os.close(watch_r)
    endpoint = None
    if not failed and metrics_dir:
        try:  # after the fork: the workers must not inherit the listening socket
            host = config.metrics_host or config.host
            endpoint = metrics_endpoint.serve_workers(host, config.metrics_port, metrics_dir)
        except metrics_endpoint.MetricsBindError as exc:
            log.error("%s: stopping the workers", exc)
            failed = True
    if failed:
        _send(children, signal.SIGTERM)
    else:
        log.info("started %d workers: pids %s", len(children), " ".join(map(str, children)))
    try:
        gone = metrics_endpoint.worker_gone if metrics_dir else None
        status = _supervise(children, limit_s, stopping=failed, gone=gone)
    finally:
        if endpoint is not None:
            endpoint.close()
        elif metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(status or (1 if failed else 0))


def _worker(
    parent: int,
    die_with_parent: Callable[[int], None],
    watch_r: int,
    watch_w: int,
    claim: PortClaim | None,
    limit_s: float,
    serve_one: Callable[[], None],
) -> int:
    """Runs in the child right after fork; returns its exit status."""
    try:
        die_with_parent(signal.SIGTERM)
        if os.getppid() != parent:
            return 1  # the parent died before prctl: no SIGTERM will come, and nobody wants us
        os.close(watch_w)
        if claim is not None:
            claim.close()  # the parent's alone: a restart must not wait for draining workers to drop it
        _watch_parent(watch_r, limit_s)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WATCHED - _FORWARDED)
        serve_one()
        return 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the server installed its own handler
        return 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


def _parent_death_signal() -> Callable[[int], None]:
    """A function that asks the kernel to send a signal to this process when its parent dies.

    The kernel sends it when the thread that forked the worker exits, not the process: the parent
    forks from its main thread, which lives as long as the parent does."""
    if not sys.platform.startswith("linux"):
        return lambda _signum: None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def die_with_parent(signum: int) -> None:
        if prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"prctl(PR_SET_PDEATHSIG): {os.strerror(code)}")

    return die_with_parent


def _watch_parent(watch_r: int, limit_s: float) -> None:
    def watch() -> None:
        while os.read(watch_r, 1):  # nothing is ever written: b"" means every write end is closed
            pass
        os.kill(os.getpid(), signal.SIGTERM)  # already sent by PR_SET_PDEATHSIG on Linux; harmless twice
        time.sleep(limit_s)
        log.error("the parent died %.0f s ago and this worker is still draining: killing it", limit_s)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="contimg-parent-watch", daemon=True).start()


def _supervise(
    children: dict[int, int], limit_s: float, stopping: bool = False, gone: Callable[[int], None] | None = None
) -> int:
    """Reap workers until none is left; returns the parent's exit status. `gone(pid)` for each reaped."""
    status = 0
    deadline = time.monotonic() + limit_s if stopping else None
    while children:
        info: signal.struct_siginfo | None
        if deadline is None:
            info = signal.sigwaitinfo(_WATCHED)
        else:
            info = signal.sigtimedwait(_WATCHED, max(0.0, deadline - time.monotonic()))
        if info is None:
            log.error("workers still running %.0f s after the stop began: killing pids %s", limit_s, sorted(children))
            _send(children, signal.SIGKILL)
            status, deadline = status or 1, None  # SIGKILL cannot be refused: wait for their exit
            continue
        if info.si_signo in _FORWARDED:
            _send(children, info.si_signo)
        if info.si_signo in _STOP_SIGNALS:
            log.info("%s received: stopping %d workers", signal.Signals(info.si_signo).name, len(children))
            _send(children, info.si_signo)
            stopping = True
            deadline = deadline or time.monotonic() + limit_s
        for pid, code in _reaped(children):
            number = children.pop(pid)
            if gone is not None:
                gone(pid)
            if not stopping:
                log.error(
                    "worker %d (pid %d) exited unexpectedly (%s): stopping the others so that the service "
                    "restarts whole",
                    number,
                    pid,
                    _describe(code),
                )
                status, stopping = _shell_status(code) or 1, True
                deadline = time.monotonic() + limit_s
                _send(children, signal.SIGTERM)
            elif code != 0:
                log.warning("worker %d (pid %d) stopped with %s", number, pid, _describe(code))
                status = status or _shell_status(code)
    return status


def _reaped(children: dict[int, int]) -> Iterator[tuple[int, int]]:
    """(pid, exit code; -N for signal N) of each worker that has exited, without blocking."""
    while children:
        try:
            pid, wait_status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in children:
            yield pid, os.waitstatus_to_exitcode(wait_status)


def _describe(code: int) -> str:
    if code >= 0:
        return f"exit status {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:  # a real-time signal has no name
        return f"killed by signal {-code}"


def _shell_status(code: int) -> int:
    return 128 - code if code < 0 else code


def _send(children: dict[int, int], signum: int) -> None:
    for pid in children:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
