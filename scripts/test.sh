#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: install, buf lint + breaking, ruff, mypy, pytest.
# Installs what is missing (pip packages into .venv, buf from npm into .tools/, redis-server from
# Debian when run as root) and fails loudly when it cannot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CONTIMG_VENV:-$ROOT/.venv}"
BUF_VERSION="1.75.0"

step() { printf '\n== %s\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }

step "python environment"
bash scripts/setup.sh

step "buf $BUF_VERSION"
BUF="$ROOT/.tools/node_modules/.bin/buf"
if [[ ! -x "$BUF" ]] || [[ "$("$BUF" --version)" != "$BUF_VERSION" ]]; then
  command -v npm >/dev/null || die "npm is required to install buf (apt-get install npm)"
  npm install --silent --no-audit --no-fund --prefix "$ROOT/.tools" "@bufbuild/buf@$BUF_VERSION" >/dev/null
fi
"$BUF" --version

step "h2load (benchmark smoke test)"
if ! command -v h2load >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nghttp2-client >/dev/null
  fi
fi
command -v h2load >/dev/null || die "h2load is required by the benchmark smoke test (apt-get install nghttp2-client)"

step "redis-server"
if ! command -v redis-server >/dev/null; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
fi
command -v redis-server >/dev/null || die "redis-server is required by the tests (apt-get install redis-server)"
redis-server --version

step "buf lint"
"$BUF" lint
step "buf format"
"$BUF" format --diff --exit-code
step "buf breaking (against the previous commit)"
if git rev-parse --verify -q HEAD~1 >/dev/null && git cat-file -e HEAD~1:buf.yaml 2>/dev/null; then
  "$BUF" breaking --against ".git#ref=HEAD~1"
else
  echo "no previous commit with protos: nothing to compare"
fi

step "ruff"
"$VENV/bin/ruff" check server clients tests scripts bench
step "mypy"
"$VENV/bin/mypy" server clients

step "pytest"
"$VENV/bin/pytest" "$@"
