#!/usr/bin/env bash
# `make bench` / `make bench-quick`: builds what the benchmarks need (bench/tools.sh, release
# builds of our binaries), runs the criterion benches of one review, then the webhook and the
# operator benchmarks against the local control planes (started if needed, stopped if this run
# started them), and joins the results into target/bench/report.md (raw numbers: *.json).
#
# Usage: bench/run.sh [--quick] [webhook|operator|mutate ...]   (default: all three)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
parts=()
for arg in "$@"; do
  case "${arg}" in
    --quick) quick=(--quick) ;;
    webhook | operator | mutate) parts+=("${arg}") ;;
    *) echo "usage: $0 [--quick] [webhook|operator|mutate ...]" >&2; exit 2 ;;
  esac
done
((${#parts[@]})) || parts=(mutate webhook operator)

export PATH="${PATH}:/usr/local/go/bin:${HOME}/.cargo/bin"
command -v curl > /dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 1; }
command -v taskset > /dev/null || { echo "taskset is missing: apt-get install util-linux" >&2; exit 1; }
# Checked now rather than found missing after half an hour of builds.
mapfile -t missing < <(.ci/missing-packages)
if ((${#missing[@]})); then
  echo "missing: apt-get install ${missing[*]} (.ci/run installs them)" >&2
  exit 1
fi
rustup target list --installed 2> /dev/null | grep -qx x86_64-unknown-linux-musl \
  || { echo "the Rust target x86_64-unknown-linux-musl is missing: rustup target add x86_64-unknown-linux-musl" >&2; exit 1; }

# KEY=value lines (a value may hold spaces: the reason a tool is unavailable).
while IFS='=' read -r key value; do
  [[ "${key}" == BENCH_* ]] && export "${key}=${value}"
done < <(bench/tools.sh)

target="${CARGO_TARGET_DIR:-target}"
out="target/bench"
mkdir -p "${out}"
nice -n 10 cargo build --release -p kosmos-bench
bin="${target}/release"
# The webhook and the operator measured are the images' binaries: static musl builds, by the
# images' own build. A glibc build of the same code measured 2.3x faster before the binaries got
# their own allocator (docs/benchmarks.md).
KOSMOS_BENCH_BIN_DIR="$(nice -n 10 images/build.sh --binaries)"
export KOSMOS_BENCH_BIN_DIR

for part in "${parts[@]}"; do
  case "${part}" in
    mutate)
      criterion_args=()
      ((${#quick[@]})) && criterion_args=(--warm-up-time 1 --measurement-time 2)
      cargo bench -p kosmos-bench --bench mutate -- "${criterion_args[@]}"
      "${bin}/kosmos-bench" criterion --dir "${target}/criterion" --out "${out}"
      ;;
    webhook | operator)
      e2e/with-cluster.sh "${bin}/kosmos-bench" "${part}" "${quick[@]}" --out "${out}"
      ;;
  esac
done
"${bin}/kosmos-bench" report --out "${out}"
