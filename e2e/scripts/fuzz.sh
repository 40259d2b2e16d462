#!/usr/bin/env bash
# make fuzz: runs every cargo-fuzz target in fuzz/ (the decoders of untrusted bytes:
# AdmissionReview, CSR request, config stream, snapshot, sniffer, HTTP observer, request paths
# under authorization, authorization policy specs, the proxy's DNS server (proxy_dns)) for a bounded
# time each, coverage-guided with libFuzzer. Needs a nightly toolchain (libFuzzer's
# instrumentation); installs cargo-fuzz into the cache when missing. Corpora and crash
# artifacts live in the cache too, so each run continues where the last stopped.
#   FUZZ_SECONDS  time per target (default 30)
#   FUZZ_TARGETS  targets to run (default: all of fuzz/Cargo.toml)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${FUZZ_SECONDS:-30}
cache=${WEFT_FUZZ_CACHE:-$HOME/.cache/weft/fuzz}
tools=$HOME/.cache/weft/tools
mkdir -p "$cache" "$tools"
export PATH=$tools/bin:$PATH
export CARGO_TARGET_DIR=$cache/target

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "installing the nightly toolchain (libFuzzer needs it)"
  rustup toolchain install nightly --profile minimal || {
    echo "make fuzz needs a nightly Rust toolchain: rustup toolchain install nightly" >&2; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz into $tools"
  cargo install cargo-fuzz --locked --root "$tools"
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir fuzz)}
summary=()
for t in $targets; do
  mkdir -p "$cache/corpus/$t" "$cache/artifacts/$t"
  echo "==> fuzzing $t for ${seconds}s"
  log=$cache/$t.log
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "$cache/corpus/$t" -- \
      -max_total_time="$seconds" -artifact_prefix="$cache/artifacts/$t/" -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz target $t failed; the input that broke it is in $cache/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  corpus=$(find "$cache/corpus/$t" -type f | wc -l)
  summary+=("$(printf '%-20s %10s runs  %6s corpus entries  no crash' "$t" "${runs:-?}" "$corpus")")
done
echo
printf '%s\n' "${summary[@]}"
