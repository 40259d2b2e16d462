#!/usr/bin/env bash
# Installs the Rust components the project's checks use, only where they are missing.
set -euo pipefail
need=()
cargo fmt --version >/dev/null 2>&1 || need+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || need+=(clippy)
if ((${#need[@]})); then
  echo "installing Rust components: ${need[*]}"
  rustup component add "${need[@]}"
fi
