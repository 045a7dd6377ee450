#!/usr/bin/env bash
# Tests cluster mode's PostgreSQL backend (cargo feature `postgres`) against a real,
# throwaway PostgreSQL: the pg module's unit tests, then tests/pg_store.rs and
# tests/pg_listen.rs, whose harness (tests/pg_harness) starts its own server from Debian's
# binaries on a free loopback port and stops it by pid. Installs `postgresql` (and `openssl`,
# for the TLS test's certificates) when missing; no server needs to be running.
# Usage: scripts/pg-test.sh           (PG_BIN=/usr/lib/postgresql/N/bin to pick a version)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%d s so far)\n' "$*" "$SECONDS"; }

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
# (tests/common/pg.rs; one cluster per test binary, a database per server directory). Every
# binary runs. The tests whose subject is the SQLite file itself return at once on PostgreSQL,
# each printing `skipped on PostgreSQL: <test>: <why>` (tests/common/pg.rs, `sqlite_only`):
#   startup        the file's lock, its mode, damaged pages, the file's and WAL's modes, the
#                  <db>.secret key file, file paths (directories, devices, symlinks)
#   storage_faults all five: files deleted or replaced under the server, a full tmpfs
#   backup         the copy of the file (a PostgreSQL --db is refused, tested on both)
# Everything else runs on PostgreSQL, adapted where the backend differs: startup's newer
# schema (the `meta` table's version), a server refusing or never answering, a wrong
# password, a missing database, sslmode=require without TLS; storage's `token` shares JWT_SECRET with the server (no <db>.secret); ops'
# /metrics has no file size; the rest (kill -9, demo seeding, replay, readiness, signals,
# /metrics) unchanged. cli runs its own commands, mostly on SQLite paths.
step "the integration tests against PostgreSQL"
PERIODE_SSE_TEST_PG=1 cargo test --features postgres \
  --test auth --test backup --test cli --test http --test http_rules --test lifecycle \
  --test ops --test properties --test rotation --test startup --test storage \
  --test storage_faults --test stream --test stream_rules --test systemd --test tickets \
  --test writes

step "done"
