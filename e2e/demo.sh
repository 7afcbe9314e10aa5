#!/usr/bin/env bash
# `make demo`: the whole system on the local cluster, with executor pods running on its node.
#
#  1. starts the local cluster (e2e/cluster.sh up: host control plane with a real node, virtual
#     control plane whose nodes node1 and node2 cluster.sh keeps Ready) and installs the CRDs;
#  2. runs the webhook (TLS, development certificates, registered with a URL client config at
#     the machine's end of the cluster's veth) and the operator (as its own ServiceAccount,
#     `--readiness builtin`, executor image from the node);
#  3. the design's walk-through: the ubuntu-statefulset (busybox stands in for ubuntu) with its
#     claim on openebs-hostpath, and `kubectl cp test.yaml ubuntu-statefulset-0:/pv`;
#  4. applies the demo plugins (e2e/demo/plugins.yaml: the walk-through plugin with pvPath, a
#     default plugin from hostPath, a Helm chart that depends on it) and the design's
#     VirtualCluster tenant1-cluster, and shows it and its executor pods progressing to Completed;
#  5. shows what landed in the virtual cluster, then stops the operator and webhook.
#
# The control planes keep running so that you can look around; `make cluster-down` stops them.
# DEMO_TIMEOUT (seconds, default 300) bounds the wait for Completed.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

DEMO_DIR="${E2E_DIR}/demo"
WORK="${STATE_DIR}/demo"
NAMESPACE=tenants
OPERATOR_NAMESPACE=kosmos-system
OPERATOR_SA=virtual-cluster-operator
WEBHOOK_CONFIGURATION=kosmos-demo-plugin-webhook
TIMEOUT="${DEMO_TIMEOUT:-300}"
WEBHOOK_PORT="${DEMO_WEBHOOK_PORT:-26490}"
WEBHOOK_ADMIN_PORT="${DEMO_WEBHOOK_ADMIN_PORT:-26491}"
OPERATOR_ADMIN_PORT="${DEMO_OPERATOR_ADMIN_PORT:-26492}"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

"${E2E_DIR}/cluster.sh" up
eval "$("${E2E_DIR}/cluster.sh" env)"
rm -rf "${WORK}"
mkdir -p "${WORK}" "${LOG_DIR}"

step "building the operator and the webhook (cargo shows its progress; the first build takes minutes)"
(cd "${REPO_DIR}" && cargo build --bin virtual-cluster-operator --bin plugin-webhook)
TARGET_DIR="$(cd "${REPO_DIR}" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="${TARGET_DIR}/debug"

pids=()
cleanup() {
  if ((${#pids[@]})); then
    log "stopping the operator and the webhook"
    kill "${pids[@]}" 2> /dev/null || true
    wait "${pids[@]}" 2> /dev/null || true
  fi
  # With the webhook gone, its registration (failurePolicy Fail) would refuse every executor Job.
  kubectl delete mutatingwebhookconfiguration "${WEBHOOK_CONFIGURATION}" --ignore-not-found > /dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The apiserver, inside the cluster's network namespace, reaches the webhook here.
WEBHOOK_HOST="${KOSMOS_E2E_WEBHOOK_HOST}"
for addr in "${WEBHOOK_HOST}/${WEBHOOK_PORT}" "127.0.0.1/${WEBHOOK_ADMIN_PORT}" "127.0.0.1/${OPERATOR_ADMIN_PORT}"; do
  if (exec 3<> "/dev/tcp/${addr}") 2> /dev/null; then
    die "${addr/\//:} is taken (is another demo running?); set DEMO_*_PORT to move it"
  fi
done

step "installing the CRDs"
kubectl apply --server-side --field-manager kosmos-demo -f "${REPO_DIR}/charts/kosmos-plugins/files/crds/"
kubectl wait --for condition=Established --timeout 60s -f "${REPO_DIR}/charts/kosmos-plugins/files/crds/" > /dev/null

step "starting the webhook on https://${WEBHOOK_HOST}:${WEBHOOK_PORT}/mutate"
# Its mark key Secret lives in the demo's namespace, so that exists first.
kubectl create namespace "${NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
"${BIN}/plugin-webhook" certs --out "${WORK}/certs" --extra-names "${WEBHOOK_HOST}" > /dev/null
"${BIN}/plugin-webhook" serve \
  --listen "${WEBHOOK_HOST}:${WEBHOOK_PORT}" --admin-listen "127.0.0.1:${WEBHOOK_ADMIN_PORT}" \
  --tls-cert "${WORK}/certs/tls.crt" --tls-key "${WORK}/certs/tls.key" \
  --operator-user "system:serviceaccount:${OPERATOR_NAMESPACE}:${OPERATOR_SA}" --watch-namespace "${NAMESPACE}" \
  --allowed-host-path-prefixes "${DEMO_DIR}/hostpath,${DEMO_DIR}/charts" \
  --namespace "${NAMESPACE}" --mark-key-secret kosmos-demo-mark-key \
  > "${LOG_DIR}/demo-webhook.log" 2>&1 &
pids+=($!)
ca_bundle="$(base64 -w0 < "${WORK}/certs/ca.crt")"
kubectl apply --server-side --field-manager kosmos-demo -f - << YAML
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: ${WEBHOOK_CONFIGURATION}
webhooks:
  - name: executor-jobs.plugin.kosmos.io
    admissionReviewVersions: ["v1"]
    clientConfig:
      url: https://${WEBHOOK_HOST}:${WEBHOOK_PORT}/mutate
      caBundle: ${ca_bundle}
    rules:
      - apiGroups: ["batch"]
        apiVersions: ["v1"]
        # UPDATE: nobody but the operator adds the executor labels to a Job by a patch.
        operations: ["CREATE", "UPDATE"]
        resources: ["jobs"]
        scope: Namespaced
    objectSelector:
      matchExpressions: [{key: plugin.kosmos.io/executor, operator: Exists}]
    # Only the demo's namespace: tests may run their own webhooks on the same cluster.
    namespaceSelector:
      matchLabels: {kubernetes.io/metadata.name: ${NAMESPACE}}
    failurePolicy: Fail
    sideEffects: None
    timeoutSeconds: 10
    reinvocationPolicy: IfNeeded
YAML
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:${WEBHOOK_ADMIN_PORT}/readyz" > /dev/null 2>&1 && break
  sleep 0.5
done
curl -fsS "http://127.0.0.1:${WEBHOOK_ADMIN_PORT}/readyz" > /dev/null \
  || die "the webhook did not become ready; see ${LOG_DIR}/demo-webhook.log"

step "starting the operator as ServiceAccount ${OPERATOR_NAMESPACE}/${OPERATOR_SA} (builtin readiness)"
kubectl create namespace "${OPERATOR_NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
kubectl -n "${OPERATOR_NAMESPACE}" create serviceaccount "${OPERATOR_SA}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
# The demo grants cluster-admin for brevity; docs/operator.md lists the rights it really needs.
kubectl create clusterrolebinding kosmos-demo-operator --clusterrole cluster-admin \
  --serviceaccount "${OPERATOR_NAMESPACE}:${OPERATOR_SA}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null
token="$(kubectl -n "${OPERATOR_NAMESPACE}" create token "${OPERATOR_SA}" --duration 24h)"
cp "${KUBECONFIG}" "${WORK}/operator.kubeconfig"
kubectl --kubeconfig "${WORK}/operator.kubeconfig" config set-credentials operator --token "${token}" > /dev/null
kubectl --kubeconfig "${WORK}/operator.kubeconfig" config set-context --current --user operator > /dev/null
KUBECONFIG="${WORK}/operator.kubeconfig" POD_NAMESPACE="${OPERATOR_NAMESPACE}" "${BIN}/virtual-cluster-operator" \
  --readiness builtin --namespace "${NAMESPACE}" --admin-addr "127.0.0.1:${OPERATOR_ADMIN_PORT}" \
  --executor-image "${EXECUTOR_IMAGE}" \
  --mark-key-namespace "${NAMESPACE}" --mark-key-secret kosmos-demo-mark-key \
  > "${LOG_DIR}/demo-operator.log" 2>&1 &
pids+=($!)

step "the virtual cluster's nodes (kept Ready by e2e/cluster.sh's heartbeat; Kosmos would join them)"
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" get nodes

step "applying the plugins and the VirtualCluster in namespace ${NAMESPACE}"
# A previous demo's namespace goes first; the operator, now running, releases its finalizers.
kubectl delete namespace "${NAMESPACE}" --ignore-not-found --timeout 120s > /dev/null
kubectl create namespace "${NAMESPACE}" --dry-run=client -o yaml | kubectl apply -f - > /dev/null

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
  die "tenant1-cluster did not reach Completed within ${TIMEOUT}s; logs: ${LOG_DIR}/demo-*.log, executor logs: kubectl -n ${NAMESPACE} logs -l plugin.kosmos.io/executor"
fi

step "what the plugins installed in the virtual cluster"
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" get namespaces demo konnectivity
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" -n konnectivity get configmap apiserver-network-proxy
kubectl --kubeconfig "${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" -n demo get configmap hello -o jsonpath='{.data.greeting}{"\n"}'
HELM_KUBECONTEXT="" KUBECONFIG="${KOSMOS_E2E_VIRTUAL_KUBECONFIG}" helm list -n demo

cat << MSG

tenant1-cluster is Completed. The operator and webhook stop now (and the webhook's
registration goes with them); the control planes keep running, so you can look around with
  eval "\$(e2e/cluster.sh env)"
  kubectl -n ${NAMESPACE} describe vc tenant1-cluster
  kubectl -n ${NAMESPACE} get jobs -o yaml     # the mutated executor Jobs
  kubectl -n ${NAMESPACE} logs -l plugin.kosmos.io/executor   # what the executor pods said
  kubectl --kubeconfig "\$KOSMOS_E2E_VIRTUAL_KUBECONFIG" get all -A
Logs: ${LOG_DIR#"${REPO_DIR}/"}/demo-{operator,webhook}.log.
Stop the control planes with: make cluster-down
MSG
