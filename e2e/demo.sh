#!/usr/bin/env bash
# `make demo`: the whole system on the local cluster, installed with its Helm chart, the
# operator, the webhook and the executor pods all running on the cluster's node.
#
#  1. builds the operator, webhook and executor images (images/build.sh, as `make images`) and
#     starts the local cluster (e2e/cluster.sh up: host control plane with a real node, which
#     imports the images, and a virtual control plane whose nodes node1 and node2 cluster.sh
#     keeps Ready);
#  2. installs charts/kosmos-plugins with `helm upgrade --install` into namespace kosmos-system
#     (restricted Pod Security enforced there), serving namespace tenants: the CRDs, the
#     operator (`--readiness builtin`), the webhook (two replicas, bootstrap certificate, called
#     by the apiserver through its Service), their ServiceAccounts and RBAC; waits until both
#     Deployments are ready;
#  3. the design's walk-through: the ubuntu-statefulset (busybox stands in for ubuntu) with its
#     claim on openebs-hostpath, and `kubectl cp test.yaml ubuntu-statefulset-0:/pv`;
#  4. applies the demo plugins (e2e/demo/plugins.yaml: the walk-through plugin with pvPath, a
#     default plugin from hostPath, a Helm chart that depends on it) and the design's
#     VirtualCluster tenant1-cluster, and shows it and its executor pods progressing to Completed;
#  5. shows what landed in the virtual cluster.
#
# The release and the control planes keep running so that you can look around; run the demo
# again to start over (it upgrades the release and replaces the demo's objects);
# `make cluster-down` stops everything. DEMO_TIMEOUT (seconds, default 300) bounds the wait
# for Completed.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

DEMO_DIR="${E2E_DIR}/demo"
NAMESPACE=tenants
RELEASE=kosmos-plugins
RELEASE_NAMESPACE=kosmos-system
TIMEOUT="${DEMO_TIMEOUT:-300}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "building the images (cargo shows its progress; the first build takes minutes)"
"${REPO_DIR}/images/build.sh"
ls -l "${REPO_DIR}"/images/out/*.oci.tar

step "starting the local cluster (it imports the images into its node)"
"${E2E_DIR}/cluster.sh" up
"${E2E_DIR}/cluster.sh" import-images
eval "$("${E2E_DIR}/cluster.sh" env)"

step "installing the chart: release ${RELEASE} in namespace ${RELEASE_NAMESPACE}, serving namespace ${NAMESPACE}"
for ns in "${RELEASE_NAMESPACE}" "${NAMESPACE}"; do
  kubectl create namespace "${ns}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
done
# Our own pods pass the strictest Pod Security Standard; the executor pods in ${NAMESPACE} mount
# hostPaths, so that namespace cannot enforce it.
kubectl label --overwrite namespace "${RELEASE_NAMESPACE}" \
  pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest > /dev/null
# CRDs installed earlier by something else (the tests, an older demo) are adopted by the
# release: Helm refuses to take over objects it did not make otherwise.
for crd in virtualclusters.kosmos.io virtualclusterplugins.kosmos.io; do
  if kubectl get crd "${crd}" > /dev/null 2>&1; then
    kubectl label --overwrite crd "${crd}" app.kubernetes.io/managed-by=Helm > /dev/null
    kubectl annotate --overwrite crd "${crd}" meta.helm.sh/release-name="${RELEASE}" \
      meta.helm.sh/release-namespace="${RELEASE_NAMESPACE}" > /dev/null
  fi
done
helm upgrade --install "${RELEASE}" "${REPO_DIR}/charts/kosmos-plugins" \
  --namespace "${RELEASE_NAMESPACE}" \
  --set "watchNamespaces={${NAMESPACE}}" \
  --set operator.readiness=builtin \
  --set "webhook.allowedHostPathPrefixes={${DEMO_DIR}/hostpath,${DEMO_DIR}/charts}" \
  --set operator.logFormat=text --set webhook.logFormat=text
for deployment in "${RELEASE}-operator" "${RELEASE}-webhook"; do
  kubectl -n "${RELEASE_NAMESPACE}" rollout status deployment "${deployment}" --timeout 180s
done
kubectl -n "${RELEASE_NAMESPACE}" get deployments,pods,services,pdb -o wide
kubectl get mutatingwebhookconfiguration "${RELEASE}-webhook-${RELEASE_NAMESPACE}" \
  -o jsonpath='{range .webhooks[*]}webhook {.name} calls service {.clientConfig.service.namespace}/{.clientConfig.service.name}:{.clientConfig.service.port}{.clientConfig.service.path}, caBundle set by the webhook: {.clientConfig.caBundle}{"\n"}{end}' \
  | sed -E 's/(caBundle set by the webhook: ).{12}.*/\1\.\.\. (bootstrap mode)/'

step "the virtual cluster's nodes (kept Ready by e2e/cluster.sh's heartbeat; Kosmos would join them)"
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" get nodes

step "clearing what a previous demo left in namespace ${NAMESPACE}"
# The release's Roles live in that namespace, so it stays; the operator, running, releases the
# finalizers of the VirtualClusters.
kubectl -n "${NAMESPACE}" delete virtualclusters,virtualclusterplugins,statefulsets,jobs,persistentvolumeclaims \
  --all --ignore-not-found --wait --timeout 180s

step "the design's walk-through: ubuntu-statefulset, its claim on openebs-hostpath, kubectl cp"
sed "s|BUSYBOX_IMAGE|${BUSYBOX_IMAGE}|" "${DEMO_DIR}/ubuntu-statefulset.yaml" | kubectl -n "${NAMESPACE}" apply -f -
kubectl -n "${NAMESPACE}" rollout status statefulset ubuntu-statefulset --timeout 120s
kubectl get pv
(cd "${DEMO_DIR}/claims/plugin-store-ubuntu-statefulset-0" \
  && kubectl -n "${NAMESPACE}" cp test.yaml ubuntu-statefulset-0:/pv)
kubectl -n "${NAMESPACE}" exec ubuntu-statefulset-0 -- ls -l /pv
sed "s|HOSTPATH_DIR|${DEMO_DIR}|g" "${DEMO_DIR}/plugins.yaml" | kubectl -n "${NAMESPACE}" apply -f -
kubectl -n "${NAMESPACE}" get vp
sed "s|KUBECONFIG_BASE64|$(base64 -w0 < "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}")|" "${DEMO_DIR}/virtual-cluster.yaml" \
  | kubectl -n "${NAMESPACE}" apply -f -

step "watching tenant1-cluster and its executor pods on node $(kubectl get nodes -o jsonpath='{.items[0].metadata.name}')"
deadline=$((SECONDS + TIMEOUT))
last=""
phase=""
while ((SECONDS < deadline)); do
  line="$(kubectl -n "${NAMESPACE}" get vc tenant1-cluster --no-headers 2> /dev/null || true)"
  line+=$'\n'"$(kubectl -n "${NAMESPACE}" get pods -l plugin.kosmos.io/executor --no-headers \
    -o custom-columns=POD:.metadata.name,PHASE:.status.phase,NODE:.spec.nodeName 2> /dev/null || true)"
  if [[ "${line}" != "${last}" ]]; then
    printf '%s\n' "${line}"
    last="${line}"
  fi
  phase="$(kubectl -n "${NAMESPACE}" get vc tenant1-cluster -o jsonpath='{.status.phase}' 2> /dev/null || true)"
  [[ "${phase}" == Completed ]] && break
  sleep 1
done

step "status.plugins"
kubectl -n "${NAMESPACE}" get vc tenant1-cluster \
  -o jsonpath='{range .status.plugins[*]}{.name}{"\t"}{.phase}{"\t"}{.jobName}{"\t"}{.message}{"\n"}{end}'
kubectl -n "${NAMESPACE}" get jobs
if [[ "${phase}" != Completed ]]; then
  kubectl -n "${NAMESPACE}" describe vc tenant1-cluster | tail -30
  kubectl -n "${RELEASE_NAMESPACE}" logs "deployment/${RELEASE}-operator" --tail 30 || true
  die "tenant1-cluster did not reach Completed within ${TIMEOUT}s; logs: kubectl -n ${RELEASE_NAMESPACE} logs deployment/${RELEASE}-operator (or -webhook), executor logs: kubectl -n ${NAMESPACE} logs -l plugin.kosmos.io/executor"
fi

step "what the plugins installed in the virtual cluster"
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" get namespaces demo konnectivity
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" -n konnectivity get configmap apiserver-network-proxy
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" -n demo get configmap hello -o jsonpath='{.data.greeting}{"\n"}'
HELM_KUBECONTEXT="" KUBECONFIG="${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" helm list -n demo

cat << MSG

tenant1-cluster is Completed. The release ${RELEASE} keeps running in ${RELEASE_NAMESPACE} and the
control planes too, so you can look around with
  eval "\$(e2e/cluster.sh env)"
  kubectl -n ${NAMESPACE} describe vc tenant1-cluster
  kubectl -n ${NAMESPACE} get jobs -o yaml     # the mutated executor Jobs
  kubectl -n ${NAMESPACE} logs -l plugin.kosmos.io/executor   # what the executor pods said
  kubectl -n ${RELEASE_NAMESPACE} logs deployment/${RELEASE}-operator   # or -webhook
  kubectl --kubeconfig "\$KOSMOS_E2E_VIRTUAL_KUBECONFIG" get all -A
  helm -n ${RELEASE_NAMESPACE} uninstall ${RELEASE}   # the chart's objects go, the CRDs stay
Stop everything with: make cluster-down
MSG
