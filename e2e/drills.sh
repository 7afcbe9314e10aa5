#!/usr/bin/env bash
# `make drills`: the fault drills at full size (50 VirtualClusters x 3 plugins, 20 operator kills,
# ..., then the whole-stack drills of e2e/tests/drills.rs that stop the control plane's own
# processes and the node's kubelet, then the certificate drills of bench/tests/cert_rotation.rs
# at 500 reviews/s) against the local control planes, and each fuzz target for KOSMOS_FUZZ_SECONDS (600)
# each, all under nice. Prints the table the README carries: drill, faults, invariant checks, failures.
# Output of each part goes to $KOSMOS_DRILLS_OUT (default /tmp/kosmos-drills), outside e2e/.state,
# which the cluster's stop removes.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

cd "${REPO_DIR}"
out="${KOSMOS_DRILLS_OUT:-${TMPDIR:-/tmp}/kosmos-drills}"
mkdir -p "${out}"
cargo=${CARGO:-cargo}
fuzz_seconds=${KOSMOS_FUZZ_SECONDS:-600}
status=0

log "fuzzing: each target for ${fuzz_seconds}s (log: ${out}/fuzz.log)"
# The three targets run side by side (one test thread each); the drills run after them, so the
# two cores are not shared between a rollout's bounds and the fuzzer.
KOSMOS_FUZZ_SECONDS="${fuzz_seconds}" nice -n 10 "${cargo}" test -p kosmos-webhook --test fuzz \
  -- --nocapture --test-threads 3 > "${out}/fuzz.log" 2>&1 || status=1

log "drills at full size (log: ${out}/drills.log)"
KOSMOS_DRILLS=full nice -n 10 "${E2E_DIR}/with-cluster.sh" "${cargo}" test -p kosmos-operator \
  --test drills -- --nocapture --test-threads 1 > "${out}/drills.log" 2>&1 || status=1

log "whole-stack drills at full size: virtual apiserver stopped, host apiserver and etcd restarted"
KOSMOS_DRILLS=full nice -n 10 "${E2E_DIR}/with-cluster.sh" "${cargo}" test -p kosmos-e2e \
  --test drills -- --nocapture --test-threads 1 >> "${out}/drills.log" 2>&1 || status=1

log "certificate drills at full size: files replaced and bootstrap renewal under 500 reviews/s"
BENCH_OHA="$("${REPO_DIR}/bench/tools.sh" oha | sed -n 's/^BENCH_OHA=//p')" KOSMOS_DRILLS=full \
  nice -n 10 "${E2E_DIR}/with-cluster.sh" "${cargo}" test -p kosmos-bench --test cert_rotation \
  -- --nocapture --test-threads 1 >> "${out}/drills.log" 2>&1 || status=1

echo
echo "| drill | faults injected | invariant checks | failures |"
echo "|---|---|---|---|"
grep -a '^drill-table |' "${out}/drills.log" | sed 's/^drill-table | \(.*\)$/| \1 |/' || true
grep -a -E '^(admission-raw|admission-structured|validation):' "${out}/fuzz.log" \
  | sed -E 's/^([a-z-]+): (.*)$/| fuzz \1 (panic, bound, patch validity) | \2 | every input | 0 |/' || true
if [[ ${status} -ne 0 ]]; then
  grep -a -E 'INVARIANT BROKEN|panicked|^test .*FAILED' "${out}"/*.log | head -40 >&2 || true
  die "a drill or fuzz target failed; see ${out}"
fi
