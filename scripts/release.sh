#!/usr/bin/env bash
# Release binaries for the boxes periode-sse runs on: stripped, statically linked (musl), one
# per target, so one file runs on any Linux of that architecture whatever its libc.
#
#   scripts/release.sh                    # x86_64 and aarch64 (armv7 too when asked)
#   scripts/release.sh aarch64            # only the named targets: x86_64, aarch64, armv7
#   scripts/release.sh --fast aarch64     # CI: codegen-units=16, no LTO (same code, cheaper build)
#
# Artifacts: target/dist/periode-sse-<version>-<triple> (target/dist-fast/ for --fast) and
# SHA256SUMS beside them; each is
# printed with its size. Each target builds in its own target dir (target/release-<triple>,
# target/fast-<triple> for --fast) with its own C flags, so the host's target/release stays
# warm. Installs the Rust targets
# and Debian packages (musl-tools, gcc-aarch64-linux-gnu) it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

FAST=0
TARGETS=()
for arg in "$@"; do
    case $arg in
        --fast) FAST=1 ;;
        x86_64 | aarch64 | armv7) TARGETS+=("$arg") ;;
        -h | --help)
            sed -n '2,12p' "$0"
            exit 0
            ;;
        *)
            echo "release.sh: unknown argument $arg (targets: x86_64, aarch64, armv7)" >&2
            exit 2
            ;;
    esac
done
((${#TARGETS[@]})) || TARGETS=(x86_64 aarch64)

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# Fast builds are for tests only; they never take the place of a real artifact.
DIST=target/dist
((FAST)) && DIST=target/dist-fast
mkdir -p "$DIST"

# The build settings every checkout has (.cargo/config.toml): keep them, add per target.
BASE_SQLITE_FLAGS="-DHAVE_FDATASYNC=1"

apt_install() {
    echo "release.sh: installing $*" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

build() {
    local short=$1 triple cc linker sqlite_flags
    case $short in
        x86_64)
            triple=x86_64-unknown-linux-musl
            cc=musl-gcc
            command -v musl-gcc >/dev/null || apt_install musl-tools
            # Rust links musl statically with its own copy of musl and the host's cc; musl-gcc
            # as the linker would swap in its own specs and produce a dynamic executable.
            linker=cc
            sqlite_flags=$BASE_SQLITE_FLAGS
            ;;
        aarch64)
            triple=aarch64-unknown-linux-musl
            cc=aarch64-linux-gnu-gcc
            command -v "$cc" >/dev/null || apt_install gcc-aarch64-linux-gnu
            linker=$cc
            # SQLite's C is compiled with the Debian cross compiler, whose glibc headers turn
            # its file calls into the *64 variants that musl does not have; SQLite then uses
            # the plain ones, which on 64-bit Linux are already 64-bit.
            sqlite_flags="$BASE_SQLITE_FLAGS -DSQLITE_DISABLE_LFS"
            ;;
        armv7)
            triple=armv7-unknown-linux-musleabihf
            cc=arm-linux-gnueabihf-gcc
            command -v "$cc" >/dev/null || apt_install gcc-arm-linux-gnueabihf
            linker=$cc
            sqlite_flags="$BASE_SQLITE_FLAGS -DSQLITE_DISABLE_LFS"
            ;;
    esac
    if ! rustup target list --installed | grep -qx "$triple"; then
        if ! rustup target add "$triple" >/dev/null 2>&1; then
            echo "release.sh: SKIPPED $short: rustup cannot install the $triple standard library here" >&2
            SKIPPED+=("$short")
            return 0
        fi
    fi
    local env_triple=${triple//-/_}
    local upper=${env_triple^^}
    local profile_env=(CARGO_PROFILE_RELEASE_STRIP=symbols) dir=target/release-$triple
    if ((FAST)); then
        # Its own target dir too: switching profiles in one dir would rebuild everything.
        dir=target/fast-$triple
        profile_env+=(CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16)
    fi
    local how="release profile"
    ((FAST)) && how="fast profile: no LTO, 16 codegen units"
    echo "release.sh: building $triple ($how)" >&2
    env "${profile_env[@]}" \
        "CC_$env_triple=$cc" \
        "CARGO_TARGET_${upper}_LINKER=$linker" \
        LIBSQLITE3_FLAGS="$sqlite_flags" \
        cargo build --release --quiet --locked --bin periode-sse --target "$triple" \
        --target-dir "$dir"
    local bin=$dir/$triple/release/periode-sse
    if readelf -lW "$bin" | grep -q 'INTERP'; then
        echo "release.sh: $bin is dynamically linked; a release binary must be static" >&2
        exit 1
    fi
    local out=$DIST/periode-sse-$VERSION-$triple
    cp "$bin" "$out"
    BUILT+=("$out")
}

BUILT=()
SKIPPED=()
for t in "${TARGETS[@]}"; do
    build "$t"
done
((${#BUILT[@]})) || { echo "release.sh: nothing was built" >&2; exit 1; }
(cd "$DIST" && sha256sum periode-sse-* >SHA256SUMS)
for out in "${BUILT[@]}"; do
    printf '%s\t%s bytes (%s KiB)\n' "$out" "$(stat -c %s "$out")" "$(($(stat -c %s "$out") / 1024))"
done
if ((${#SKIPPED[@]})); then
    echo "skipped: ${SKIPPED[*]}"
fi
