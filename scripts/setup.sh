#!/usr/bin/env bash
# Installs what building needs, only when missing: the wasm32 target, the wasm-bindgen CLI at exactly
# the version Cargo.toml pins, and the pinned nightly of the threaded page build. What only the tests
# need is scripts/setup-test.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
want="$1"
nightly="${2:-}"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$want"
fi
# The threaded page build: a pinned nightly with rust-src (build-std). Optional: without it the
# page runs on one thread, so a failure here is a warning, not an error.
if [ -n "$nightly" ] && ! rustup run "$nightly" rustc --version >/dev/null 2>&1; then
  echo "installing $nightly with rust-src for the threaded page build (once)"
  rustup toolchain install "$nightly" --profile minimal --component rust-src ||
    echo "podar: could not install $nightly; the page will run single-threaded"
fi
