"""Room for the connections the server accepts within the process's open-files limit.

Every client connection is a file descriptor, and so is every database file, log and socket the
server opens itself. Without a cap, idle connections (a few KB each) can take every descriptor up to
RLIMIT_NOFILE: then the server can accept nobody and open nothing. gRPC's core closes connections
past `grpc.max_allowed_incoming_connections` as they arrive; this module raises the soft limit as far
as the hard one allows (as Go's runtime does) so that the cap and a reserve fit under it, or lowers
the cap, saying so, where the hard limit is too low.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger("contimg.server")

# Descriptors kept for the server's own use: database files and connections, the write process,
# Redis, logs, the metrics port, the browser port's connections and its channels to this server.
RESERVED = 1024


def fit_connections(wanted: int) -> int:
    """The connection cap to use: `wanted`, with the soft open-files limit raised to fit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, raised, exc)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return wanted
    fitted = min(wanted, max(soft - RESERVED, soft // 2))
    if fitted == wanted:
        return wanted
    log.warning(
        "--max-connections lowered from %d to %d: the open-files limit is %d (raise it, e.g. LimitNOFILE=)",
        wanted,
        fitted,
        soft,
    )
    return fitted
