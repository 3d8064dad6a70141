"""One `contimg-server serve` per port: a second one fails at start, before it opens the database.

gRPC binds with SO_REUSEPORT when it forks workers (--workers N), and the kernel then lets a
second server bind the same port and silently take part of its connections. Two checks, made in
the parent before any fork, database or gRPC object:

* The claim: a Linux abstract-namespace unix socket named after the port, held for the life of
  the process. The kernel frees the name when the process dies, SIGKILL included, so no stale lock
  file is ever left behind. The claim serializes instances started at the same moment, and covers
  the time between these checks and gRPC's bind (opening storage, migrations, --demo-images: up
  to minutes), during which nobody listens on the port yet. Abstract names belong to the network
  namespace, as ports do: a container with a network of its own has its own names too.
  Keyed by port, not by address: 0.0.0.0:P and 127.0.0.1:P overlap, and two SO_REUSEPORT servers
  may bind them side by side; so one contimg-server per port on a host.
* The probe: a plain bind of every address the host resolves to, without SO_REUSEPORT, which
  fails with EADDRINUSE while anything listens there: another program, a contimg-server without
  the claim, or workers still draining after their parent died (they do not hold the claim).
  SO_REUSEADDR, as gRPC sets it, so that connections in TIME_WAIT from a stopped server do not count.

Port 0 needs neither: the kernel picks a port nobody serves. The in-process server (tests) does not
come here at all.
"""

from __future__ import annotations

import errno
import socket
import struct
import sys
from types import TracebackType

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class AddressTaken(Exception):
    """Another server already serves the address; the message names it."""


class PortClaim:
    """Held while the process serves; `close` (or the process's death) releases it."""

    def __init__(self, sock: socket.socket | None):
        self._sock = sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> PortClaim:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def claim_port(host: str, port: int) -> PortClaim:
    """Claim `port` for this process and check nothing listens on host:port; raises AddressTaken."""
    if port == 0:
        return PortClaim(None)
    address = f"{host}:{port}"
    claim = PortClaim(_hold(port, address))
    try:
        _probe(host, port, address)
    except BaseException:
        claim.close()
        raise
    return claim


def _hold(port: int, address: str) -> socket.socket | None:
    if not sys.platform.startswith("linux"):
        return None  # no abstract namespace: the probe alone
    name = f"\0dsa110-contimg-server/port/{port}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
        # Listening only so that a refused instance can name the holder (SO_PEERCRED); never accepted.
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno != errno.EADDRINUSE:
            raise
        raise AddressTaken(
            f"cannot serve {address}: another contimg-server{_holder(name)} is already serving port {port}"
        ) from None
    return sock


def _holder(name: str) -> str:
    """' (pid N)' of the process holding the claim, or '' if it cannot be told."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.setblocking(False)  # a full backlog answers EAGAIN instead of blocking
            probe.connect(name)
            pid, _uid, _gid = _UCRED.unpack(probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    except OSError:
        return ""
    return f" (pid {pid})"


def _probe(host: str, port: int, address: str) -> None:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(bare or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return  # gRPC reports an address it cannot resolve when it binds
    for family, kind, proto, _name, sockaddr in dict.fromkeys(found):
        try:
            sock = socket.socket(family, kind, proto)
        except OSError:
            continue  # e.g. IPv6 disabled: gRPC skips that address too
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise AddressTaken(f"cannot serve {address}: another server is already serving it") from None
                # Anything else (an address not on this host, say) is gRPC's to report at bind.
