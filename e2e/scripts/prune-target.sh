#!/usr/bin/env bash
# Keeps the shared build cache (CARGO_TARGET_DIR, outside the repo) from filling the disk.
#
# Every checkout path builds its own copy of weft's crates (cargo's hash includes the path), a
# debug test binary is ~0.5 GB and there are ~50 of them, so a few clones on one machine fill the
# disk and the next `make test` dies with ENOSPC. When the disk holding the cache has less than
# WEFT_CACHE_FREE_FLOOR_GB free (default 25), this removes what is cheap to rebuild: the
# incremental state and the workspace's own artifacts, keeping the third-party crates (the slow
# part of a cold build). If less than WEFT_CACHE_HARD_FLOOR_GB (default 10) is still free, the
# debug profile directory goes too (the next build is cold). Idempotent.
set -euo pipefail

target=${CARGO_TARGET_DIR:-$HOME/.cache/weft/target}
floor=${WEFT_CACHE_FREE_FLOOR_GB:-25}
hard_floor=${WEFT_CACHE_HARD_FLOOR_GB:-10}
[ -d "$target" ] || exit 0

free_gb() { df --output=avail -B1G "$target" | tail -1 | tr -d ' '; }

before=$(free_gb)
if [ "$before" -ge "$floor" ]; then
  exit 0
fi
echo "prune-target: ${before} GB free under $target (floor ${floor} GB); removing the workspace's own build artifacts"

here=$(cd "$(dirname "$0")/../.." && pwd)
# The workspace's target names as cargo writes them into deps/ (dashes become underscores).
names=$(cd "$here" && cargo metadata --no-deps --format-version 1 --offline 2>/dev/null |
  python3 -c 'import json, sys
m = json.load(sys.stdin)
print("\n".join(sorted({t["name"].replace("-", "_") for p in m["packages"] for t in p["targets"]})))') || names=""
[ -n "$names" ] || echo "prune-target: cargo metadata did not list the workspace's targets; only the incremental state goes"

for profile in debug release; do
  dir=$target/$profile
  [ -d "$dir" ] || continue
  rm -rf "$dir/incremental"
  for n in $names; do
    # <name>-<16 hex>, lib<name>-<16 hex>.{rlib,rmeta}, and their .d / .dwp files.
    find "$dir/deps" -maxdepth 1 -type f -regextype posix-extended \
      -regex ".*/(lib)?${n}-[0-9a-f]{16}(\.[a-z]+)?" -delete 2>/dev/null || true
  done
done

after=$(free_gb)
if [ "$after" -lt "$hard_floor" ]; then
  echo "prune-target: still ${after} GB free; removing $target/debug (the next build is cold)"
  rm -rf "$target/debug"
  after=$(free_gb)
fi
echo "prune-target: ${after} GB free (was ${before} GB)"
