"""The `contimg` command: gRPC's own log lines quieted, then the CLI (dsa110.contimg.client.cli).

gRPC core logs connection events (TLS handshake failures, GOAWAY, reconnects) to stderr at INFO and
reads GRPC_VERBOSITY once, when grpc is first imported. The client package imports grpc, so the
default is set here, before that package is imported; an exported GRPC_VERBOSITY still wins.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from dsa110.contimg.client.cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
