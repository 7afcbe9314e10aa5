# Shared by the e2e scripts: where things are, which versions, small helpers.
# Sourced, not executed; the caller has already set `set -euo pipefail`.
# shellcheck shell=bash
# The variables are used by the scripts that source this file.
# shellcheck disable=SC2034

E2E_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "${E2E_DIR}/.." && pwd)"
# shellcheck source=e2e/versions.env
. "${E2E_DIR}/versions.env"

# The binaries are large (about 400 MB) and slow to build, so they live outside the checkout, shared
# by every clone on the machine, in one folder per component and version.
E2E_CACHE="${KOSMOS_E2E_CACHE:-${HOME}/.cache/kosmos-plugin-e2e}"
STATE_DIR="${KOSMOS_E2E_STATE:-${E2E_DIR}/.state}"
LOG_DIR="${STATE_DIR}/logs"

KUBERNETES_BIN_DIR="${E2E_CACHE}/kubernetes-${KUBERNETES_VERSION}"
ETCD_BIN_DIR="${E2E_CACHE}/etcd-${ETCD_VERSION}"
HELM_BIN_DIR="${E2E_CACHE}/helm-${HELM_VERSION}"
KUSTOMIZE_BIN_DIR="${E2E_CACHE}/kustomize-${KUSTOMIZE_VERSION}"

KUBE_APISERVER="${KUBERNETES_BIN_DIR}/kube-apiserver"
KUBE_CONTROLLER_MANAGER="${KUBERNETES_BIN_DIR}/kube-controller-manager"
KUBECTL="${KUBERNETES_BIN_DIR}/kubectl"
ETCD="${ETCD_BIN_DIR}/etcd"
HELM="${HELM_BIN_DIR}/helm"
KUSTOMIZE="${KUSTOMIZE_BIN_DIR}/kustomize"

# Prints a message on stderr with the script's name, so interleaved output stays readable.
log() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

# Prints a message and exits non-zero.
die() {
  log "error: $*"
  exit 1
}
