#!/usr/bin/env bash
# `make demo`: starts the local control planes, installs the CRDs from the chart and (once the
# operator and webhook exist) runs them against it with the seed's example plugins and
# VirtualCluster, so that you can watch the VirtualCluster progress with kubectl.
# The control planes keep running afterwards; `make cluster-down` stops them.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

CRD_DIR="${REPO_DIR}/charts/kosmos-plugins/crds"

"${E2E_DIR}/cluster.sh" up
eval "$("${E2E_DIR}/cluster.sh" env)"

shopt -s nullglob
crds=("${CRD_DIR}"/*.yaml)
shopt -u nullglob
if [[ ${#crds[@]} -eq 0 ]]; then
  die "no CRDs in ${CRD_DIR#"${REPO_DIR}/"}/: they are generated from crates/api (see README.md);" \
    "generate them and run make demo again"
fi

log "installing ${#crds[@]} CRD file(s) from ${CRD_DIR#"${REPO_DIR}/"}/"
for f in "${crds[@]}"; do
  kubectl apply --server-side --field-manager kosmos-demo -f "${f}"
done
# Custom resources can be created only once their CRD is Established.
for f in "${crds[@]}"; do
  kubectl wait --for condition=Established --timeout 60s -f "${f}" > /dev/null
done
kubectl get crd -o custom-columns=NAME:.metadata.name,ESTABLISHED:'.status.conditions[?(@.type=="Established")].status' \
  | grep -E '^NAME|kosmos\.io'

cat << MSG

The control planes are up and the CRDs are installed:
  eval "\$(e2e/cluster.sh env)"      # KUBECONFIG (host), KOSMOS_E2E_VIRTUAL_KUBECONFIG, PATH
  kubectl get crd | grep kosmos.io

The operator and the webhook do not exist yet, so the demo stops here. Later versions run them,
apply the seed's example plugins and a VirtualCluster, and show it progressing to Completed.
Stop everything with: make cluster-down   (logs: ${LOG_DIR#"${REPO_DIR}/"}/)
MSG
