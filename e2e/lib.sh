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
LOCAL_PATH_PROVISIONER_BIN_DIR="${E2E_CACHE}/local-path-provisioner-${LOCAL_PATH_PROVISIONER_VERSION}"
LOCAL_PATH_PROVISIONER="${LOCAL_PATH_PROVISIONER_BIN_DIR}/local-path-provisioner"
# cert-manager's controller and CA injector are our own mains (e2e/cert-manager): the folder is
# keyed by the version and by a hash of those sources, so an edit to them builds anew.
CERT_MANAGER_SRC="${E2E_DIR}/cert-manager"
CERT_MANAGER_HASH="$(cat "${CERT_MANAGER_SRC}/go.mod" "${CERT_MANAGER_SRC}/go.sum" \
  "${CERT_MANAGER_SRC}/controller/main.go" "${CERT_MANAGER_SRC}/cainjector/main.go" | sha256sum | cut -c1-12)"
CERT_MANAGER_BIN_DIR="${E2E_CACHE}/cert-manager-${CERT_MANAGER_VERSION}-${CERT_MANAGER_HASH}"
CERT_MANAGER_CONTROLLER="${CERT_MANAGER_BIN_DIR}/cert-manager-controller"
CERT_MANAGER_CAINJECTOR="${CERT_MANAGER_BIN_DIR}/cert-manager-cainjector"
# The release's own CRDs (deploy/crds of its module), copied next to the binaries.
CERT_MANAGER_CRDS="${CERT_MANAGER_BIN_DIR}/crds"
KUBELET="${KUBERNETES_BIN_DIR}/kubelet"
KUBE_SCHEDULER="${KUBERNETES_BIN_DIR}/kube-scheduler"
KUBE_PROXY="${KUBERNETES_BIN_DIR}/kube-proxy"

# The images of the local node (built by e2e/images.sh, imported by e2e/cluster.sh). Never pulled:
# "localhost/" names no registry that could answer.
PAUSE_IMAGE=localhost/kosmos-e2e/pause:1
BUSYBOX_IMAGE=localhost/kosmos-e2e/busybox:1
# The executor image: the ref `make images` (images/build.sh) gives the real one, so that a test
# or the demo does not care which of the two was imported.
WORKSPACE_VERSION="$(sed -nE '/^\[workspace.package\]/,/^\[/ s/^version = "(.*)"/\1/p' "${REPO_DIR}/Cargo.toml")"
EXECUTOR_IMAGE="localhost/kosmos/plugin-executor:${WORKSPACE_VERSION}"
LOCAL_PATH_PROVISIONER_IMAGE="localhost/kosmos-e2e/local-path-provisioner:${LOCAL_PATH_PROVISIONER_VERSION}"
CERT_MANAGER_CONTROLLER_IMAGE="localhost/kosmos-e2e/cert-manager-controller:${CERT_MANAGER_VERSION}"
CERT_MANAGER_CAINJECTOR_IMAGE="localhost/kosmos-e2e/cert-manager-cainjector:${CERT_MANAGER_VERSION}"

# Prints a message on stderr with the script's name, so interleaved output stays readable.
log() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

# Prints a message and exits non-zero.
die() {
  log "error: $*"
  exit 1
}
