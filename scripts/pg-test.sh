#!/usr/bin/env bash
# Tests cluster mode's PostgreSQL backend (cargo feature `postgres`) against a real,
# throwaway PostgreSQL: the pg module's unit tests, then tests/pg_store.rs and
# tests/pg_listen.rs, whose harness (tests/pg_harness) starts its own server from Debian's
# binaries on a free loopback port and stops it by pid. Installs `postgresql` (and `openssl`,
# for the TLS test's certificates) when missing; no server needs to be running.
# Usage: scripts/pg-test.sh           (PG_BIN=/usr/lib/postgresql/N/bin to pick a version)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }

need_pkgs=()
if [ -z "${PG_BIN:-}" ] && ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  need_pkgs+=(postgresql)
fi
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  apt-get update -qq
  # The package's own cluster is not needed (the tests make theirs); don't start it.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
# The harness runs the server as `postgres` when we are root (the package creates the user).
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "no postgres user: install the postgresql package" >&2
  exit 1
fi

step "lints with the feature"
cargo clippy --features postgres --all-targets --quiet -- -D warnings

step "pg unit tests"
cargo test --features postgres --lib --quiet pg::

step "pg integration tests (real PostgreSQL)"
cargo test --features postgres --test 'pg_*'

step "several nodes on one PostgreSQL"
cargo test --features postgres --test cluster --test cluster_faults --test cluster_tickets

# The whole integration suite once more, every server on a throwaway PostgreSQL
# (tests/common/pg.rs). Skipped here, because they inspect or break the SQLite file itself
# (they run on SQLite in the ordinary `cargo test`): startup (file checks, locks, modes),
# storage (kill -9 of the file's writes, the <db>.secret file, demo reseeding on one file),
# storage_faults (deleted files, full disk), backup (a copy of the file), ops (the database
# file's size on /metrics); and systemd, whose readiness protocol does not depend on the
# backend (not run against PostgreSQL yet). cli runs its own commands, mostly on SQLite paths.
step "the integration tests against PostgreSQL"
PERIODE_SSE_TEST_PG=1 cargo test --features postgres \
  --test auth --test cli --test http --test http_rules --test lifecycle --test properties \
  --test rotation --test stream --test stream_rules --test tickets --test writes
