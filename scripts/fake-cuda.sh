#!/usr/bin/env bash
# The fake CUDA driver for tests (tests/fake_cuda/, described in .specs/fake-cuda.md).
#
#   scripts/fake-cuda.sh build   # builds libcuda.so.1 (+ libcuda.so) with the system C compiler
#
# The last line on stdout is the absolute path of the directory holding the two libraries: put
# it on LD_LIBRARY_PATH and the crate sees CUDA devices named "fake CUDA device N (test driver)".
# The directory is ${CARGO_TARGET_DIR:-target}/fake-cuda. Needs only cc (gcc or clang) and
# pthreads.
set -euo pipefail
cd "$(dirname "$0")/.."

build() {
  local target=${CARGO_TARGET_DIR:-target}
  mkdir -p "$target/fake-cuda"
  local dir
  dir=$(cd "$target/fake-cuda" && pwd)
  "${CC:-cc}" -std=c11 -O2 -g -Wall -Wextra -Werror -fno-strict-aliasing -fPIC -shared \
    -fvisibility=hidden -pthread -Wl,-soname,libcuda.so.1 \
    -o "$dir/libcuda.so.1.tmp" tests/fake_cuda/fake_cuda.c
  mv -f "$dir/libcuda.so.1.tmp" "$dir/libcuda.so.1"
  ln -sf libcuda.so.1 "$dir/libcuda.so"
  echo "$dir"
}

case "${1:-}" in
  build) build ;;
  *) echo "usage: $0 build" >&2; exit 2 ;;
esac
