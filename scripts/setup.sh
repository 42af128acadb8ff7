#!/usr/bin/env bash
# Installs what building and testing need, only when missing: the wasm32 target and the wasm-bindgen CLI
# at exactly the version Cargo.toml pins.
set -euo pipefail
want="$1"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
  rustup target add wasm32-unknown-unknown
fi
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "installing wasm-bindgen-cli $want (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$want"
fi
