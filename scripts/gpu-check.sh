#!/usr/bin/env bash
# The one prepared check for the GPU machine (NVIDIA H200, driver 580 / CUDA 13.0 with NVRTC,
# x86-64, no Rust toolchain).
#
#   scripts/gpu-check.sh build        # here: release CLI + the CUDA test binary → gpu-bundle/ (< 64 MiB)
#   scripts/gpu-check.sh run OUT_DIR  # there: CUDA tests, demo, benches → OUT_DIR/gpu-check.md
#
# `run` finishes in about 5 minutes on an H200: the CUDA integration tests, `demo --backend
# cuda`, `bench --backend cuda` at 1 GiB for four chunk sizes (which chunk size suits the
# device) and at 16 GiB with 1 MiB chunks. Every bench row says whether the leaves hashed on
# the device agree with the leaves hashed on the host from a copy of the same bytes.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=gpu-bundle

build() {
  set -e
  cargo build --release --bin vram-residency
  # The CUDA tests as one binary (they skip themselves without a device).
  local test_bin
  test_bin=$(cargo test --release --test cuda --no-run --message-format=json 2>/dev/null \
    | grep '"name":"cuda"' | grep '"test":true' \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -n "$test_bin" ] || { echo "could not find the cuda test binary" >&2; exit 1; }
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  cp target/release/vram-residency "$BUNDLE/"
  cp "$test_bin" "$BUNDLE/cuda-tests"
  strip "$BUNDLE/vram-residency" "$BUNDLE/cuda-tests" 2>/dev/null || true
  local size
  size=$(du -sm "$BUNDLE" | cut -f1)
  echo "bundle: $BUNDLE ($size MiB)"
  [ "$size" -lt 64 ] || { echo "bundle over 64 MiB" >&2; exit 1; }
}

run() {
  local out=${1:?usage: gpu-check.sh run OUT_DIR}
  mkdir -p "$out"
  local report="$out/gpu-check.md" bin="$BUNDLE/vram-residency" started=$SECONDS
  export VRAM_WORKER_TOKEN=gpu-check-token-0123456789abcdef
  {
    echo "# vram-residency GPU check ($(date -u +%FT%TZ))"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv 2>&1 | head -5
    echo '```'
  } >"$report"

  echo "## devices" >>"$report"
  echo '```' >>"$report"
  timeout 60 "$bin" devices --backend cuda >"$out/devices.txt" 2>&1
  echo "exit $?" >>"$out/devices.txt"
  cat "$out/devices.txt" >>"$report"
  echo '```' >>"$report"
  # The device logs one warning when NVRTC cannot build the leaf kernel (then every figure
  # below is the host copy-back path): say which path the figures measure.
  if grep -q "copies chunks back" "$out/devices.txt"; then
    echo "**leaf kernel: NOT in use** (NVRTC missing or failed; see above): device figures are copy-back" >>"$report"
  else
    echo "leaf kernel: compiled with NVRTC and in use" >>"$report"
  fi

  echo "## CUDA integration tests" >>"$report"
  echo '```' >>"$report"
  (cd "$BUNDLE" && timeout 120 ./cuda-tests --test-threads=1 2>&1) | tail -25 >>"$report"
  echo '```' >>"$report"

  echo "## demo --backend cuda" >>"$report"
  echo '```' >>"$report"
  timeout 120 "$bin" demo --backend cuda >"$out/demo.txt" 2>&1
  local demo_rc=$?
  tail -30 "$out/demo.txt" >>"$report"
  echo "exit $demo_rc" >>"$report"
  echo '```' >>"$report"

  echo "## bench --backend cuda" >>"$report"
  "$bin" bench --markdown-header >>"$report"
  for chunk in 64KiB 256KiB 1MiB 4MiB; do
    timeout 120 "$bin" bench --backend cuda --size 1GiB --chunk-size "$chunk" --repeats 2 \
      --latency-iterations 500 --markdown-row >>"$report" 2>>"$out/bench-stderr.txt" \
      || echo "| bench 1 GiB, $chunk chunks failed (exit $?) |" >>"$report"
  done
  timeout 240 "$bin" bench --backend cuda --size 16GiB --chunk-size 1MiB --repeats 1 \
    --latency-iterations 500 --markdown-row >>"$report" 2>>"$out/bench-stderr.txt" \
    || echo "| bench 16 GiB failed (exit $?) |" >>"$report"
  echo >>"$report"
  echo "took $((SECONDS - started)) s" >>"$report"
  cat "$report"
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run OUT_DIR" >&2; exit 2 ;;
esac
