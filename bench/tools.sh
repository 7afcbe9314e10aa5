#!/usr/bin/env bash
# Builds what the benchmarks run besides our own crates, once, into a cache outside the checkout
# keyed by version (a second run takes a second): the load generator oha (crates.io), the Go peer
# webhook (controller-runtime, bench/peer-webhook) and k3s's helm-controller (its Go module).
# Prints KEY=path lines for the driver; a component that cannot be built is printed as
# KEY=unavailable:<reason> so the report says why instead of the run failing.
#
# Usage: bench/tools.sh [oha]   (oha: only the load generator, which `make test`'s certificate
# drills use too)
#
# Environment: KOSMOS_BENCH_CACHE (default ~/.cache/kosmos-plugin-bench), GO (default: go on PATH,
# else /usr/local/go/bin/go).
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
HELM_CONTROLLER_VERSION=v0.17.9

cache="${KOSMOS_BENCH_CACHE:-${HOME}/.cache/kosmos-plugin-bench}"
mkdir -p "${cache}"
GO="${GO:-$(command -v go || true)}"
GO="${GO:-/usr/local/go/bin/go}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath

# Two runs at once would build into the same folders; the second waits and finds them built.
exec 9> "${cache}/.build.lock"
flock -w 3600 9 || { echo "waited an hour for ${cache}/.build.lock" >&2; exit 1; }

log() { echo "bench/tools.sh: $*" >&2; }

# oha: the load generator, from crates.io, with its lock file.
oha_dir="${cache}/oha-${OHA_VERSION}"
if [[ ! -x "${oha_dir}/bin/oha" ]]; then
  log "building oha ${OHA_VERSION} (once; a few minutes)"
  # In a throw-away target folder, not the caller's CARGO_TARGET_DIR (a release build of oha's
  # dependencies there would only take disk).
  env -u CARGO_TARGET_DIR nice -n 10 cargo install oha --version "${OHA_VERSION}" --locked \
    --root "${oha_dir}.tmp" >&2
  rm -rf "${oha_dir}" && mv "${oha_dir}.tmp" "${oha_dir}"
fi
echo "BENCH_OHA=${oha_dir}/bin/oha"
[[ "${1:-}" == oha ]] && exit 0

# The peer webhook: keyed by its sources, so an edit rebuilds it.
peer_key=$(cat bench/peer-webhook/go.mod bench/peer-webhook/go.sum bench/peer-webhook/main.go | sha256sum | cut -c1-12)
peer_dir="${cache}/peer-webhook-${peer_key}"
if [[ ! -x "${peer_dir}/peer-webhook" ]]; then
  if [[ ! -x "${GO}" ]]; then
    echo "BENCH_PEER_WEBHOOK=unavailable:no Go toolchain found (set GO=/path/to/go)"
  else
    log "building the controller-runtime peer webhook (once)"
    mkdir -p "${peer_dir}.tmp"
    (cd bench/peer-webhook && nice -n 10 "${GO}" build -ldflags='-s -w' -o "${peer_dir}.tmp/peer-webhook" .) >&2
    rm -rf "${peer_dir}" && mv "${peer_dir}.tmp" "${peer_dir}"
  fi
fi
[[ -x "${peer_dir}/peer-webhook" ]] && echo "BENCH_PEER_WEBHOOK=${peer_dir}/peer-webhook"

# k3s's helm-controller, from its Go module at a pinned version.
hc_dir="${cache}/helm-controller-${HELM_CONTROLLER_VERSION}"
if [[ ! -x "${hc_dir}/helm-controller" && -x "${GO}" ]]; then
  log "building helm-controller ${HELM_CONTROLLER_VERSION} (once; several minutes)"
  mkdir -p "${hc_dir}.tmp"
  if GOBIN="${hc_dir}.tmp" nice -n 10 "${GO}" install -ldflags='-s -w' \
    "github.com/k3s-io/helm-controller@${HELM_CONTROLLER_VERSION}" > "${cache}/helm-controller-build.log" 2>&1; then
    rm -rf "${hc_dir}" && mv "${hc_dir}.tmp" "${hc_dir}"
  else
    log "helm-controller did not build; see ${cache}/helm-controller-build.log"
  fi
fi
if [[ -x "${hc_dir}/helm-controller" ]]; then
  echo "BENCH_HELM_CONTROLLER=${hc_dir}/helm-controller"
else
  reason=$(tail -n 3 "${cache}/helm-controller-build.log" 2>/dev/null | tr '\n' ' ' || true)
  echo "BENCH_HELM_CONTROLLER=unavailable:go install github.com/k3s-io/helm-controller@${HELM_CONTROLLER_VERSION} failed: ${reason:-no Go toolchain}"
fi
