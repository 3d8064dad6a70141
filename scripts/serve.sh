#!/usr/bin/env bash
# Serve the gRPC API on 127.0.0.1:50051 over an embedded SQLite file in ./data, with demo data
# (DEMO_IMAGES images, default 2000) generated on first start. Extra flags go to `contimg-server serve`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
exec "${CONTIMG_VENV:-$ROOT/.venv}/bin/contimg-server" serve --demo-images "${DEMO_IMAGES:-2000}" --allow-anonymous-writes "$@"
