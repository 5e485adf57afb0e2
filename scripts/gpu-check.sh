#!/usr/bin/env bash
# The one prepared check for the GPU machine (NVIDIA H200, driver 580 / CUDA 13.0, x86-64, no
# Rust toolchain). It cannot pass by skipping: the CUDA tests run with VR_EXPECT_CUDA=1 (a test
# that finds no device fails), the report takes the leaf kernel's state from what the binary
# says, and every step's exit status is in the report and in the script's own.
#
#   scripts/gpu-check.sh build        # here: release CLI + the CUDA test binary → gpu-bundle/ (< 64 MiB)
#   scripts/gpu-check.sh run OUT_DIR  # there: devices, CUDA tests, demo, benches → OUT_DIR/gpu-check.md
#
# `build` honours CARGO_TARGET_DIR and shows cargo's errors. `run` exits non-zero, saying "no
# CUDA device", where the driver shows none, and non-zero when any step failed. Its timeouts add
# up to 510 s. The leaf kernel is embedded PTX: no NVRTC is needed on the GPU machine.
#
# A dry run without a GPU, on the fake CUDA driver (.specs/fake-cuda.md), smaller benches:
#   LD_LIBRARY_PATH=$(scripts/fake-cuda.sh build | tail -1) GPU_CHECK_SIZE=64MiB \
#     GPU_CHECK_BIG=256MiB VR_FAKE_CUDA_MEM_BYTES=1073741824 scripts/gpu-check.sh run /tmp/dry
# GPU_CHECK_PROFILE=test makes `build` use cargo's test profile instead of release (a faster
# build for a dry run; the figures are then meaningless).
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=gpu-bundle

build() {
  set -e
  local target=${CARGO_TARGET_DIR:-target} profile=${GPU_CHECK_PROFILE:-release} dir
  case "$profile" in
    release) dir=release ;;
    test) dir=debug ;;
    *) echo "GPU_CHECK_PROFILE must be release or test" >&2; exit 2 ;;
  esac
  cargo build --profile "$profile" -p vram-residency-cli --bin vram-residency
  # The CUDA tests as one binary. cargo's own errors go to the terminal; only the JSON (stdout)
  # is searched for the binary's path.
  local test_bin
  test_bin=$(cargo test --profile "$profile" -p vram-residency --test cuda --no-run --message-format=json \
    | grep '"name":"cuda"' | grep '"test":true' \
    | grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)
  [ -n "$test_bin" ] || { echo "could not find the cuda test binary" >&2; exit 1; }
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"
  cp "$target/$dir/vram-residency" "$BUNDLE/"
  cp "$test_bin" "$BUNDLE/cuda-tests"
  strip "$BUNDLE/vram-residency" "$BUNDLE/cuda-tests" 2>/dev/null || true
  local size
  size=$(du -sm "$BUNDLE" | cut -f1)
  echo "bundle: $BUNDLE ($size MiB, $profile)"
  [ "$size" -lt 64 ] || { echo "bundle over 64 MiB" >&2; exit 1; }
}

run() {
  local out=${1:?usage: gpu-check.sh run OUT_DIR}
  local bin="$BUNDLE/vram-residency" tests="$BUNDLE/cuda-tests"
  for f in "$bin" "$tests"; do
    [ -x "$f" ] || { echo "missing $f: run 'scripts/gpu-check.sh build' first and copy $BUNDLE/ here" >&2; exit 2; }
  done
  mkdir -p "$out"
  local report="$out/gpu-check.md" started=$SECONDS failed=()
  export VRAM_WORKER_TOKEN=gpu-check-token-0123456789abcdef
  export VR_EXPECT_CUDA=1
  local size=${GPU_CHECK_SIZE:-1GiB} big=${GPU_CHECK_BIG:-16GiB}

  # No device, no report: say so and stop.
  if ! timeout 30 "$bin" devices --backend cuda >"$out/devices.txt" 2>&1; then
    cat "$out/devices.txt" >&2
    echo "no CUDA device: 'vram-residency devices --backend cuda' failed (see above)" >&2
    exit 3
  fi

  {
    echo "# vram-residency GPU check ($(date -u +%FT%TZ))"
    echo
    echo '```'
    if command -v nvidia-smi >/dev/null; then
      nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv 2>&1 | head -5
    else
      echo "nvidia-smi: not available"
    fi
    echo '```'
    echo "## devices"
    echo '```'
    cat "$out/devices.txt"
    echo '```'
  } >"$report"
  # The leaf kernel's state, as the binary reports it for each device.
  local kernel
  kernel=$(grep -E '^ +leaf kernel: ' "$out/devices.txt" | sed -E 's/^ +leaf kernel: //' | sort | uniq -c \
    | sed -E 's/^ *([0-9]+) (.*)/\2 on \1 device(s)/' | paste -sd ';' -)
  echo "leaf kernel: ${kernel:-not reported}" >>"$report"
  if ! grep -q '^ *leaf kernel: on (embedded PTX)' "$out/devices.txt"; then
    echo "**no device hashes leaves with the kernel: the device figures below are host copy-back**" >>"$report"
  fi

  echo "## CUDA integration tests (VR_EXPECT_CUDA=1)" >>"$report"
  echo '```' >>"$report"
  (cd "$BUNDLE" && timeout 120 ./cuda-tests --test-threads=1) >"$out/tests.txt" 2>&1
  local tests_rc=$?
  grep -E '^test |^test result' "$out/tests.txt" | tail -25 >>"$report"
  echo "exit $tests_rc" >>"$report"
  echo '```' >>"$report"
  [ "$tests_rc" = 0 ] || failed+=("CUDA tests (exit $tests_rc)")

  echo "## demo --backend cuda" >>"$report"
  echo '```' >>"$report"
  timeout 60 "$bin" demo --backend cuda >"$out/demo.txt" 2>&1
  local demo_rc=$?
  grep -E '^   device [0-9]+: ' "$out/demo.txt" >>"$report"
  tail -18 "$out/demo.txt" >>"$report"
  echo "exit $demo_rc" >>"$report"
  echo '```' >>"$report"
  [ "$demo_rc" = 0 ] || failed+=("demo (exit $demo_rc)")

  echo "## bench --backend cuda" >>"$report"
  "$bin" bench --markdown-header >>"$report"
  local chunk rc
  for chunk in 64KiB 256KiB 1MiB 4MiB; do
    timeout 45 "$bin" bench --backend cuda --size "$size" --chunk-size "$chunk" --repeats 2 \
      --latency-iterations 500 --markdown-row >>"$report" 2>>"$out/bench-stderr.txt"
    rc=$?
    [ "$rc" = 0 ] || { echo "| bench $size, $chunk chunks failed (exit $rc) |" >>"$report"; failed+=("bench $size/$chunk (exit $rc)"); }
  done
  timeout 120 "$bin" bench --backend cuda --size "$big" --chunk-size 1MiB --repeats 1 \
    --latency-iterations 500 --markdown-row >>"$report" 2>>"$out/bench-stderr.txt"
  rc=$?
  [ "$rc" = 0 ] || { echo "| bench $big failed (exit $rc) |" >>"$report"; failed+=("bench $big (exit $rc)"); }

  echo >>"$report"
  if [ "${#failed[@]}" = 0 ]; then
    echo "all steps passed; took $((SECONDS - started)) s" >>"$report"
  else
    echo "**FAILED: ${failed[*]}**; took $((SECONDS - started)) s" >>"$report"
  fi
  cat "$report"
  [ "${#failed[@]}" = 0 ]
}

case "${1:-}" in
  build) build ;;
  run) shift; run "$@" ;;
  *) echo "usage: $0 build | run OUT_DIR" >&2; exit 2 ;;
esac
