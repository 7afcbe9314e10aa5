#!/usr/bin/env bash
# Runs a real one-node Kubernetes cluster plus a second control plane for the tests and `make
# demo`, the way kind does, but with processes instead of a node container:
#
#   host     etcd + kube-apiserver + kube-controller-manager + kube-scheduler, and one node:
#            containerd (Debian's, runc, CNI bridge), the kubelet and kube-proxy. CRDs,
#            VirtualClusters, plugins, executor Jobs and their pods, the operator and the webhook
#            live here. StorageClass openebs-hostpath is served by rancher's local-path-provisioner.
#   virtual  a second kube-apiserver (same etcd, own prefix) + its own kube-controller-manager:
#            plays the virtual cluster that plugins install into. Its nodes node1 and node2 are
#            kept Ready by a heartbeat that this script runs (they have no kubelet).
#
# Network: everything runs inside the network namespace kosmos-e2e-<hash of the state folder>,
# which reaches the rest of the machine only through one veth pair: 10.213.<n>.2 (the node IP,
# where the apiservers listen) inside, 10.213.<n>.1 outside (where a test process serves a
# webhook). The namespace has no default route and drops anything its pods would forward out of
# it, so no pod can reach the machine's real network. Pods get 10.244.0.0/24 on a bridge inside.
#
# Usage: e2e/cluster.sh up        start what is not running (idempotent), wait until ready
#        e2e/cluster.sh down      stop every process this script started, remove every mount,
#                                 network device, namespace, cgroup and container it made, and
#                                 the state
#        e2e/cluster.sh status    show each component; exit 1 unless all are up
#        e2e/cluster.sh env       print `export` lines: eval "$(e2e/cluster.sh env)"
#        e2e/cluster.sh load-image ARCHIVE...
#                                 import OCI/docker image archives into the node's containerd
#        e2e/cluster.sh import-images
#                                 import the node's images and images/out/*.oci.tar again where
#                                 an archive changed since its last import (as `up` does)
#        e2e/cluster.sh exec CMD...
#                                 run CMD inside the cluster's network namespace (curl a pod IP)
#        e2e/cluster.sh stop-component NAME | kill-component NAME | start-component NAME
#                                 fault drills: stop (TERM, then KILL after 15 s), kill at once
#                                 (KILL: a crash, no graceful shutdown) or start again and wait
#                                 until ready one of etcd, host-apiserver, virtual-apiserver,
#                                 kubelet (the node's containers keep running without it; start
#                                 waits until the node is Ready, registering it again if it was
#                                 deleted, and the storage provisioner is back), of THIS state
#                                 folder's cluster only
#
# Internal, used by e2e/with-cluster.sh so that several concurrent users share one cluster and
# the last one out stops it only if none of them found it already running:
#        e2e/cluster.sh acquire PID   up, and register PID as a user
#        e2e/cluster.sh release PID   unregister PID; down if the cluster was started by acquire
#                                     and no registered user is still alive
#
# Ports (on the node IP or 127.0.0.1 inside the namespace), a block from a base port, 26400 unless
# its subnet is taken:
#   base+0  etcd client (plain http, loopback only)     base+1  etcd peer
#   base+43 host kube-apiserver (https)                 base+44 virtual kube-apiserver (https)
#   base+57 host kube-controller-manager (https)        base+58 virtual kube-controller-manager
#   base+59 kube-scheduler (https)
# The block also picks the veth subnet: n = (base / 100) % 256. When 10.213.<n>.1 is already on
# this machine (another checkout's cluster), `up` takes the next block of 100 and records it in
# the state. KOSMOS_E2E_PORT_BASE pins the base (and then a taken subnet is an error).
# State: e2e/.state/ (KOSMOS_E2E_STATE): kubeconfigs, pki/, pids/, logs/, etcd/, node/.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

DEFAULT_PORT_BASE=26400
PORT_BASE_FILE="${STATE_DIR}/port-base"

set_ports() {
  PORT_BASE="$1"
  ETCD_PORT=$((PORT_BASE + 0))
  ETCD_PEER_PORT=$((PORT_BASE + 1))
  HOST_APISERVER_PORT=$((PORT_BASE + 43))
  VIRTUAL_APISERVER_PORT=$((PORT_BASE + 44))
  HOST_KCM_PORT=$((PORT_BASE + 57))
  VIRTUAL_KCM_PORT=$((PORT_BASE + 58))
  SCHEDULER_PORT=$((PORT_BASE + 59))
  SUBNET_INDEX=$(((PORT_BASE / 100) % 256))
  HOST_SIDE_IP="10.213.${SUBNET_INDEX}.1"
  NODE_IP="10.213.${SUBNET_INDEX}.2"
}

if [[ -n "${KOSMOS_E2E_PORT_BASE:-}" ]]; then
  [[ "${KOSMOS_E2E_PORT_BASE}" =~ ^[0-9]+$ && "${KOSMOS_E2E_PORT_BASE}" -ge 1024 \
    && "${KOSMOS_E2E_PORT_BASE}" -le 65400 ]] \
    || die "KOSMOS_E2E_PORT_BASE=${KOSMOS_E2E_PORT_BASE} is not a port number between 1024 and 65400"
  PORT_BASE_PINNED=1
  set_ports "${KOSMOS_E2E_PORT_BASE}"
elif [[ -f "${PORT_BASE_FILE}" ]]; then
  PORT_BASE_PINNED=1
  set_ports "$(cat "${PORT_BASE_FILE}")"
else
  PORT_BASE_PINNED=0
  set_ports "${DEFAULT_PORT_BASE}"
fi
# Seconds to wait for one component to become ready; a cold apiserver on 2 cores takes ~15 s.
START_TIMEOUT="${KOSMOS_E2E_START_TIMEOUT:-120}"

PKI="${STATE_DIR}/pki"
PIDS="${STATE_DIR}/pids"
USERS="${STATE_DIR}/users"
HOST_KUBECONFIG="${STATE_DIR}/host.kubeconfig"
VIRTUAL_KUBECONFIG="${STATE_DIR}/virtual.kubeconfig"

# The node's own folder: containerd's root and state, the kubelet's root, pod logs, CNI.
NODE_DIR="${STATE_DIR}/node"
# The host cluster's Service addresses (kube-proxy makes them work inside the namespace).
HOST_SERVICE_CIDR=10.96.0.0/16
CONTAINERD_SOCK="${NODE_DIR}/containerd.sock"
NODE_NAME=kosmos-e2e-node
POD_CIDR=10.244.0.0/24
# One cluster per state folder: the namespace, veth and cgroup names come from its path, so two
# checkouts' clusters never share one.
CLUSTER_ID="$(realpath -m "${STATE_DIR}" | sha256sum | cut -c1-8)"
NETNS="kosmos-e2e-${CLUSTER_ID}"
VETH_HOST="kosmos-${CLUSTER_ID}"
VETH_NODE_TMP="kn-${CLUSTER_ID}"
CGROUP_ROOT="/kosmos-e2e-${CLUSTER_ID}"
NETNS_EXEC=(nsenter "--net=/run/netns/${NETNS}")
# Debian's containernetworking-plugins; elsewhere the usual /opt/cni/bin.
CNI_BIN_DIR="${KOSMOS_E2E_CNI_BIN_DIR:-/usr/lib/cni}"
[[ -x "${CNI_BIN_DIR}/bridge" ]] || [[ -n "${KOSMOS_E2E_CNI_BIN_DIR:-}" ]] || CNI_BIN_DIR=/opt/cni/bin

# In start order; `down` stops them in reverse.
COMPONENTS=(etcd host-apiserver virtual-apiserver host-controller-manager virtual-controller-manager
  scheduler node containerd kubelet kube-proxy node-heartbeat)

# ---------------------------------------------------------------------------------------------
# Processes

pid_of() {
  local file="${PIDS}/$1.pid"
  [[ -f "${file}" ]] && cat "${file}"
}

# True if the pid file of component $1 names a live process that is really ours: the same binary,
# started with this state folder in its arguments. A pid reused by an unrelated process, or a
# component of another checkout, is never treated as ours (and never killed).
is_running() {
  local pid
  pid="$(pid_of "$1")" || return 1
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/${pid}/cmdline" ]] || return 1
  local cmdline
  cmdline="$(tr '\0' ' ' < "/proc/${pid}/cmdline" 2> /dev/null)" || return 1
  [[ "${cmdline}" == *"$(binary_of "$1")"* && "${cmdline}" == *"${STATE_DIR}"* ]]
}

binary_of() {
  case "$1" in
    etcd) echo "${ETCD}" ;;
    *-apiserver) echo "${KUBE_APISERVER}" ;;
    *-controller-manager) echo "${KUBE_CONTROLLER_MANAGER}" ;;
    scheduler) echo "${KUBE_SCHEDULER}" ;;
    node) echo "kosmos-e2e-node" ;;
    containerd) echo "containerd" ;;
    kubelet) echo "${KUBELET}" ;;
    kube-proxy) echo "${KUBE_PROXY}" ;;
    node-heartbeat) echo "kosmos-e2e-node-heartbeat" ;;
    *) die "unknown component $1" ;;
  esac
}

port_of() {
  case "$1" in
    etcd) echo "127.0.0.1:${ETCD_PORT}" ;;
    host-apiserver) echo "${NODE_IP}:${HOST_APISERVER_PORT}" ;;
    virtual-apiserver) echo "${NODE_IP}:${VIRTUAL_APISERVER_PORT}" ;;
    host-controller-manager) echo "127.0.0.1:${HOST_KCM_PORT}" ;;
    virtual-controller-manager) echo "127.0.0.1:${VIRTUAL_KCM_PORT}" ;;
    scheduler) echo "127.0.0.1:${SCHEDULER_PORT}" ;;
    kubelet) echo "${NODE_IP}:10250" ;;
    *) echo "-" ;;
  esac
}

# Runs a command in the cluster's network namespace (only: it shares the machine's files).
in_netns() {
  "${NETNS_EXEC[@]}" "$@"
}


# Starts component $1 in its own session (so a Ctrl-C in the terminal that ran `make test` or a
# test binary exiting does not take it down) with all output in its log. The lock's file
# descriptor is closed for the child, or the daemon would hold the lock for its whole life.
# nsenter execs the command, so the pid is the component's own.
spawn() {
  local name="$1"
  shift
  mkdir -p "${PIDS}" "${LOG_DIR}"
  local where
  where="$(port_of "${name}")"
  if [[ "${where}" == - ]]; then
    log "starting ${name} (log: ${LOG_DIR}/${name}.log)"
  else
    log "starting ${name} on ${where} (log: ${LOG_DIR}/${name}.log)"
  fi
  setsid "$@" > "${LOG_DIR}/${name}.log" 2>&1 < /dev/null 9>&- &
  echo "$!" > "${PIDS}/${name}.pid"
}

# Stops component $1 if it is ours and alive: TERM, then KILL after 15 s; with $2 = KILL, KILL at
# once (a crash).
stop() {
  local name="$1" pid
  if ! is_running "${name}"; then
    rm -f "${PIDS}/${name}.pid"
    return
  fi
  pid="$(pid_of "${name}")"
  if [[ "${2:-}" == KILL ]]; then
    log "killing ${name} (pid ${pid})"
    kill -KILL -- "-${pid}" 2> /dev/null || kill -KILL "${pid}" 2> /dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      kill -0 "${pid}" 2> /dev/null || break
      sleep 0.1
    done
    rm -f "${PIDS}/${name}.pid"
    return
  fi
  log "stopping ${name} (pid ${pid})"
  # The whole process group (spawn made the component its leader): a shell loop's children too.
  kill -TERM -- "-${pid}" 2> /dev/null || kill -TERM "${pid}" 2> /dev/null || true
  local i
  for ((i = 0; i < 150; i++)); do
    kill -0 "${pid}" 2> /dev/null || break
    sleep 0.1
  done
  if kill -0 "${pid}" 2> /dev/null; then
    log "${name} (pid ${pid}) ignored TERM for 15 s; killing it"
    kill -KILL -- "-${pid}" 2> /dev/null || kill -KILL "${pid}" 2> /dev/null || true
  fi
  rm -f "${PIDS}/${name}.pid"
}

# Waits until `probe` (the remaining arguments) succeeds, or fails loudly with the log's tail when
# component $1 dies or $START_TIMEOUT seconds pass.
wait_ready() {
  local name="$1"
  shift
  local deadline=$((SECONDS + START_TIMEOUT))
  while ! "$@" > /dev/null 2>&1; do
    if ! is_running "${name}"; then
      tail -n 40 "${LOG_DIR}/${name}.log" >&2 || true
      die "${name} exited during startup; the end of ${LOG_DIR}/${name}.log is above"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 40 "${LOG_DIR}/${name}.log" >&2 || true
      die "${name} was not ready after ${START_TIMEOUT} s; the end of ${LOG_DIR}/${name}.log is above"
    fi
    sleep 0.5
  done
}

probe_etcd() {
  in_netns curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" | grep -q '"health":"true"'
}

# /readyz and /healthz are readable without credentials (system:public-info-viewer), so the probe
# also proves that the serving certificate verifies against our CA. $1 address, $2 port, $3 path.
probe_https() {
  in_netns curl -fsS --max-time 2 --cacert "${PKI}/ca.crt" "https://$1:$2/$3"
}

# ---------------------------------------------------------------------------------------------
# Certificates and kubeconfigs

# Makes an EC P-256 key and a certificate signed by our CA. $1 file stem, $2 subject, $3 extended
# key usage (serverAuth, clientAuth or both), $4 subjectAltName (optional).
issue_cert() {
  local stem="$1" subject="$2" usage="$3" san="${4:-}"
  [[ -f "${PKI}/${stem}.crt" ]] && return
  local ext="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=${usage}"
  [[ -n "${san}" ]] && ext+=$'\n'"subjectAltName=${san}"
  openssl ecparam -name prime256v1 -genkey -noout -out "${PKI}/${stem}.key" 2> /dev/null
  openssl req -new -key "${PKI}/${stem}.key" -subj "${subject}" -out "${PKI}/${stem}.csr"
  openssl x509 -req -in "${PKI}/${stem}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAcreateserial -days 3650 -sha256 -extfile <(printf '%s\n' "${ext}") \
    -out "${PKI}/${stem}.crt" 2> /dev/null
  rm -f "${PKI}/${stem}.csr"
}

make_pki() {
  mkdir -p "${PKI}"
  chmod 700 "${PKI}"
  if [[ ! -f "${PKI}/ca.crt" ]]; then
    log "making a CA and certificates in ${PKI}"
    openssl ecparam -name prime256v1 -genkey -noout -out "${PKI}/ca.key" 2> /dev/null
    openssl req -x509 -new -key "${PKI}/ca.key" -sha256 -days 3650 -subj "/CN=kosmos-e2e-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "${PKI}/ca.crt"
  fi
  # Names a pod would use for the in-cluster API, the node IP (where everything reaches the
  # apiservers) and loopback inside the namespace.
  local in_cluster="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  in_cluster+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:${NODE_IP}"
  issue_cert host-apiserver "/CN=kube-apiserver" serverAuth "${in_cluster},IP:10.96.0.1"
  issue_cert virtual-apiserver "/CN=kube-apiserver" serverAuth "${in_cluster},IP:10.97.0.1"
  issue_cert host-controller-manager-serving "/CN=kube-controller-manager" serverAuth \
    "DNS:localhost,IP:127.0.0.1"
  issue_cert virtual-controller-manager-serving "/CN=kube-controller-manager" serverAuth \
    "DNS:localhost,IP:127.0.0.1"
  issue_cert scheduler-serving "/CN=kube-scheduler" serverAuth "DNS:localhost,IP:127.0.0.1"
  # system:masters may do anything, impersonation included (tests act as ServiceAccounts).
  issue_cert admin "/O=system:masters/CN=kosmos-e2e-admin" clientAuth
  # The identities RBAC's bootstrap policy grants each component's permissions to.
  issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  issue_cert scheduler "/CN=system:kube-scheduler" clientAuth
  issue_cert kube-proxy "/CN=system:kube-proxy" clientAuth
  # The Node authorizer and NodeRestriction admit the kubelet by this name and group only.
  issue_cert kubelet "/O=system:nodes/CN=system:node:${NODE_NAME}" clientAuth
  issue_cert kubelet-serving "/CN=${NODE_NAME}" serverAuth "DNS:${NODE_NAME},IP:${NODE_IP}"
  # The apiserver's identity towards aggregated APIs (metrics-server in a plugin, say); the
  # apiservers trust it only under this name.
  issue_cert front-proxy-client "/CN=front-proxy-client" clientAuth
  # The apiserver's identity towards the kubelet (logs, exec, port-forward: kubectl cp).
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  local cluster
  for cluster in host virtual; do
    if [[ ! -f "${PKI}/${cluster}-sa.key" ]]; then
      openssl ecparam -name prime256v1 -genkey -noout -out "${PKI}/${cluster}-sa.key" 2> /dev/null
      openssl ec -in "${PKI}/${cluster}-sa.key" -pubout -out "${PKI}/${cluster}-sa.pub" 2> /dev/null
    fi
  done
  chmod 600 "${PKI}"/*.key
}

# Writes a kubeconfig with embedded certificates. $1 file, $2 cluster name, $3 port, $4 cert stem.
write_kubeconfig() {
  local file="$1" name="$2" port="$3" stem="$4"
  local tmp="${file}.tmp"
  cat > "${tmp}" << EOF
apiVersion: v1
kind: Config
clusters:
- name: ${name}
  cluster:
    server: https://${NODE_IP}:${port}
    certificate-authority-data: $(base64 -w0 < "${PKI}/ca.crt")
users:
- name: ${name}-${stem}
  user:
    client-certificate-data: $(base64 -w0 < "${PKI}/${stem}.crt")
    client-key-data: $(base64 -w0 < "${PKI}/${stem}.key")
contexts:
- name: ${name}
  context:
    cluster: ${name}
    user: ${name}-${stem}
current-context: ${name}
EOF
  chmod 600 "${tmp}"
  mv -f "${tmp}" "${file}"
}

# ---------------------------------------------------------------------------------------------
# Admission webhooks: the apiserver's client certificate (issue 8, mutual TLS)
#
# Every apiserver presents a client certificate to every admission webhook (kubeconfig user
# '*'), signed by a CA of its own, ${PKI}/admission-client-ca.crt, that signs nothing else. A
# webhook started with --client-ca pointing at that file accepts the apiservers and nobody else;
# a webhook that asks for no client certificate is unaffected. Kept apart from make_pki so the
# whole admission setup is this one function and one apiserver flag.
ADMISSION_CONFIG="${STATE_DIR}/admission/config.yaml"

write_admission_config() {
  local dir="${STATE_DIR}/admission"
  mkdir -p "${dir}"
  chmod 700 "${dir}"
  if [[ ! -f "${PKI}/admission-client-ca.crt" ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "${PKI}/admission-client-ca.key" 2> /dev/null
    openssl req -x509 -new -key "${PKI}/admission-client-ca.key" -sha256 -days 3650 \
      -subj "/CN=kosmos-e2e-admission-client-ca" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
      -out "${PKI}/admission-client-ca.crt"
  fi
  if [[ ! -f "${PKI}/admission-client.crt" ]]; then
    openssl ecparam -name prime256v1 -genkey -noout -out "${PKI}/admission-client.key" 2> /dev/null
    openssl req -new -key "${PKI}/admission-client.key" -subj "/CN=kube-apiserver-admission-client" \
      -out "${PKI}/admission-client.csr"
    openssl x509 -req -in "${PKI}/admission-client.csr" -CA "${PKI}/admission-client-ca.crt" \
      -CAkey "${PKI}/admission-client-ca.key" -CAcreateserial -days 3650 -sha256 \
      -extfile <(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth") \
      -out "${PKI}/admission-client.crt" 2> /dev/null
    rm -f "${PKI}/admission-client.csr"
  fi
  chmod 600 "${PKI}"/admission-client*.key
  cat > "${dir}/kubeconfig" << EOF
apiVersion: v1
kind: Config
users:
- name: '*'
  user:
    client-certificate: ${PKI}/admission-client.crt
    client-key: ${PKI}/admission-client.key
EOF
  cat > "${ADMISSION_CONFIG}" << EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: ${dir}/kubeconfig
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: ${dir}/kubeconfig
EOF
}

# ---------------------------------------------------------------------------------------------
# Components

start_etcd() {
  is_running etcd && return
  mkdir -p "${STATE_DIR}/etcd"
  chmod 700 "${STATE_DIR}/etcd"
  # One etcd serves both control planes under different prefixes. No fsync: the data is thrown
  # away with the state, and fsync dominates apiserver write latency on slow disks.
  spawn etcd "${NETNS_EXEC[@]}" "${ETCD}" \
    --name kosmos-e2e \
    --data-dir "${STATE_DIR}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "kosmos-e2e=http://127.0.0.1:${ETCD_PEER_PORT}" \
    --unsafe-no-fsync \
    --log-level warn
}

# $1 cluster (host|virtual), $2 port, $3 service CIDR, $4 authorization modes.
start_apiserver() {
  local cluster="$1" port="$2" cidr="$3" authz="$4"
  is_running "${cluster}-apiserver" && return
  # MutatingAdmissionWebhook, ValidatingAdmissionWebhook and ValidatingAdmissionPolicy are on by
  # default in 1.34; naming them states what the tests rely on. NodeRestriction goes with the
  # Node authorizer for the kubelet. PodNodeSelector and PodTolerationRestriction act only on
  # namespaces annotated for them: the operator benchmark steers the pods of its namespaces to a
  # node it registers without a kubelet (bench/src/fake_node.rs), so the real node never runs them. The host's `kubernetes` Service points at the node IP (the
  # lease endpoint reconciler), which pods reach through kube-proxy; the virtual cluster has no
  # pods, so its Service has no endpoints.
  local reconciler=lease
  [[ "${cluster}" == virtual ]] && reconciler=none
  spawn "${cluster}-apiserver" "${NETNS_EXEC[@]}" "${KUBE_APISERVER}" \
    --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --etcd-prefix "/kosmos-e2e/${cluster}" \
    --bind-address "${NODE_IP}" \
    --advertise-address "${NODE_IP}" \
    --secure-port "${port}" \
    --tls-cert-file "${PKI}/${cluster}-apiserver.crt" \
    --tls-private-key-file "${PKI}/${cluster}-apiserver.key" \
    --client-ca-file "${PKI}/ca.crt" \
    --authorization-mode "${authz}" \
    --enable-admission-plugins NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy,PodNodeSelector,PodTolerationRestriction \
    --admission-control-config-file "${ADMISSION_CONFIG}" \
    --service-cluster-ip-range "${cidr}" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local/${cluster}" \
    --service-account-key-file "${PKI}/${cluster}-sa.pub" \
    --service-account-signing-key-file "${PKI}/${cluster}-sa.key" \
    --kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
    --requestheader-client-ca-file "${PKI}/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI}/front-proxy-client.crt" \
    --proxy-client-key-file "${PKI}/front-proxy-client.key" \
    --endpoint-reconciler-type "${reconciler}" \
    --allow-privileged=true \
    --profiling=false \
    --cert-dir "${STATE_DIR}/${cluster}-apiserver-certs"
}

# $1 cluster (host|virtual), $2 port, $3 service CIDR.
start_controller_manager() {
  local cluster="$1" port="$2" cidr="$3"
  is_running "${cluster}-controller-manager" && return
  local kubeconfig="${STATE_DIR}/${cluster}-controller-manager.kubeconfig"
  # Every default controller runs (job, garbage collector, namespace, serviceaccount, token, ...);
  # --use-service-account-credentials gives each its own RBAC identity as in a real cluster.
  # The client rate and job workers are raised from 20 QPS and 5 workers, as large clusters do:
  # with the defaults the job controller, not the operator, set the pace of `make bench`'s
  # 5,000 Jobs (pods done in minutes, their Jobs marked complete at ~1 per second).
  spawn "${cluster}-controller-manager" "${NETNS_EXEC[@]}" "${KUBE_CONTROLLER_MANAGER}" \
    --kubeconfig "${kubeconfig}" \
    --authentication-kubeconfig "${kubeconfig}" \
    --authorization-kubeconfig "${kubeconfig}" \
    --bind-address 127.0.0.1 \
    --secure-port "${port}" \
    --tls-cert-file "${PKI}/${cluster}-controller-manager-serving.crt" \
    --tls-private-key-file "${PKI}/${cluster}-controller-manager-serving.key" \
    --leader-elect=false \
    --use-service-account-credentials \
    --service-account-private-key-file "${PKI}/${cluster}-sa.key" \
    --root-ca-file "${PKI}/ca.crt" \
    --cluster-signing-cert-file "${PKI}/ca.crt" \
    --cluster-signing-key-file "${PKI}/ca.key" \
    --service-cluster-ip-range "${cidr}" \
    --kube-api-qps 100 \
    --kube-api-burst 200 \
    --concurrent-job-syncs 20 \
    --profiling=false
}

start_scheduler() {
  is_running scheduler && return
  local kubeconfig="${STATE_DIR}/scheduler.kubeconfig"
  spawn scheduler "${NETNS_EXEC[@]}" "${KUBE_SCHEDULER}" \
    --kubeconfig "${kubeconfig}" \
    --authentication-kubeconfig "${kubeconfig}" \
    --authorization-kubeconfig "${kubeconfig}" \
    --bind-address 127.0.0.1 \
    --secure-port "${SCHEDULER_PORT}" \
    --tls-cert-file "${PKI}/scheduler-serving.crt" \
    --tls-private-key-file "${PKI}/scheduler-serving.key" \
    --leader-elect=false \
    --profiling=false
}

# ---------------------------------------------------------------------------------------------
# The network namespace

# The namespace, its loopback, and the veth pair to the machine. Idempotent.
setup_netns() {
  if [[ ! -e "/run/netns/${NETNS}" ]]; then
    log "making network namespace ${NETNS} (node IP ${NODE_IP}, machine side ${HOST_SIDE_IP})"
    ip netns add "${NETNS}"
  fi
  in_netns ip link set lo up
  if ! ip link show "${VETH_HOST}" > /dev/null 2>&1; then
    ip link add "${VETH_HOST}" type veth peer name "${VETH_NODE_TMP}" netns "${NETNS}"
    in_netns ip link set "${VETH_NODE_TMP}" name eth0
    ip addr add "${HOST_SIDE_IP}/30" dev "${VETH_HOST}"
    in_netns ip addr add "${NODE_IP}/30" dev eth0
    ip link set "${VETH_HOST}" up
    in_netns ip link set eth0 up
  fi
  # Pods reach Services and each other through the namespace's own routing (kube-proxy's DNAT,
  # the bridge), so it forwards; bridged traffic must pass iptables for Service replies.
  in_netns sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Nothing a pod sends may leave through the veth: the machine would route the reply to the
  # pod's address out of its real network. The apiserver's own connections to a webhook served
  # by a test process on the machine side are not forwarded, so they still pass.
  if ! in_netns iptables -w -C FORWARD -o eth0 -j DROP 2> /dev/null; then
    in_netns iptables -w -I FORWARD 1 -o eth0 -j DROP
    in_netns iptables -w -I FORWARD 1 -i eth0 -j DROP
  fi
  # The apiserver calls webhooks behind a Service (the chart's) at its ClusterIP. A connection
  # made in the namespace needs a route before kube-proxy's DNAT picks a pod (then it is routed
  # again, to cni0), and the namespace has no default route: this one gives it. What no Service
  # rewrites must not leave through the veth, so it is dropped on the way out.
  if [[ -z "$(in_netns ip route show "${HOST_SERVICE_CIDR}")" ]]; then
    in_netns ip route add "${HOST_SERVICE_CIDR}" dev eth0 src "${NODE_IP}"
  fi
  if ! in_netns iptables -w -C OUTPUT -o eth0 -d "${HOST_SERVICE_CIDR}" -j DROP 2> /dev/null; then
    in_netns iptables -w -I OUTPUT 1 -o eth0 -d "${HOST_SERVICE_CIDR}" -j DROP
  fi
}

# Deletes the namespace (with its end of the veth, which takes the other end along).
remove_netns() {
  if ip link show "${VETH_HOST}" > /dev/null 2>&1; then
    ip link del "${VETH_HOST}" 2> /dev/null || true
  fi
  if [[ -e "/run/netns/${NETNS}" ]]; then
    ip netns del "${NETNS}" 2> /dev/null || log "could not delete network namespace ${NETNS}"
  fi
}

# ---------------------------------------------------------------------------------------------
# The node: its mount namespace, containerd, kubelet, kube-proxy

# The cgroup folders (cgroup v1: one per hierarchy) under which the kubelet puts every pod.
cgroup_dirs() {
  local mount
  for mount in /sys/fs/cgroup/*/; do
    [[ -f "${mount}cgroup.procs" ]] || continue
    [[ "${mount}" == */unified/ ]] && continue
    echo "${mount%/}${CGROUP_ROOT}"
  done
}

make_cgroups() {
  local dir parent
  while read -r dir; do
    mkdir -p "${dir}"
    # A new cpuset is empty and admits no process until it gets its parent's CPUs and memory.
    if [[ -f "${dir}/cpuset.cpus" && -z "$(cat "${dir}/cpuset.cpus")" ]]; then
      parent="$(dirname "${dir}")"
      cat "${parent}/cpuset.cpus" > "${dir}/cpuset.cpus"
      cat "${parent}/cpuset.mems" > "${dir}/cpuset.mems"
    fi
  done < <(cgroup_dirs)
}

# Removes our cgroup trees, deepest first; they are empty once every container is gone. On a
# hybrid host runc also makes each container's cgroup in the unified (v2) hierarchy, under the
# same root, though make_cgroups never made that one: it goes too.
remove_cgroups() {
  local dir
  while read -r dir; do
    [[ -d "${dir}" ]] || continue
    find "${dir}" -depth -type d -exec rmdir {} \; 2> /dev/null || true
    [[ -d "${dir}" ]] && log "cgroup ${dir} is not empty; left in place"
  done < <(cgroup_dirs; echo "/sys/fs/cgroup/unified${CGROUP_ROOT}")
  return 0
}

# The node's mount namespace is held by a sleeping process, like kind's node container. Every
# mount containerd and the kubelet make (container root filesystems, Secret volumes, pod network
# namespaces) lives only there and disappears with the last process inside. It also gets its own
# /run (shim sockets, runc state) and /var/log (the kubelet's /var/log/containers links), so two
# nodes on one machine share none of them.
start_node() {
  is_running node && return
  mkdir -p "${NODE_DIR}"
  make_cgroups
  # shellcheck disable=SC2016 # expanded by the inner bash
  spawn node "${NETNS_EXEC[@]}" unshare --mount --propagation slave -- bash -c '
    set -e
    mount -t tmpfs -o mode=755,size=64m kosmos-e2e-run /run
    mount -t tmpfs -o mode=755,size=64m kosmos-e2e-log /var/log
    mkdir -p /var/log/containers
    exec -a "kosmos-e2e-node $0" sleep infinity' "${STATE_DIR}"
  local i
  for ((i = 0; i < 50; i++)); do
    # The mounts are in place once the holder has become `sleep`.
    [[ "$(tr '\0' ' ' < "/proc/$(pid_of node)/cmdline" 2> /dev/null)" == kosmos-e2e-node* ]] && return
    is_running node || sleep 0.1
    sleep 0.1
  done
  die "the node's mount namespace did not come up; see ${LOG_DIR}/node.log"
}

# Sets NODE_EXEC: the command prefix that runs a program in the node (see in_node).
node_exec() {
  local holder
  holder="$(pid_of node)" || die "the node is not running"
  NODE_EXEC=(nsenter --target "${holder}" --mount --net)
}

write_containerd_config() {
  mkdir -p "${NODE_DIR}/cni/net.d" "${NODE_DIR}/cni/ipam"
  cat > "${NODE_DIR}/containerd.toml" << EOF
# Written by e2e/cluster.sh: the local node's containerd. Everything under ${NODE_DIR}.
version = 2
root = "${NODE_DIR}/containerd/root"
state = "${NODE_DIR}/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "${CONTAINERD_SOCK}"

[ttrpc]
  address = "${CONTAINERD_SOCK}.ttrpc"

[debug]
  level = "warn"

[plugins."io.containerd.internal.v1.opt"]
  path = "${NODE_DIR}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # Pod network namespaces as files under the state folder, not in the machine's /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  # This machine grants root no CAP_SYS_RESOURCE, so no process may lower its oom_score_adj below
  # its parent's (the kubelet asks -998 for sandboxes): containerd clamps it instead.
  restrict_oom_score_adj = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "${NODE_DIR}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "${CNI_BIN_DIR}"
    conf_dir = "${NODE_DIR}/cni/net.d"
    max_conf_num = 1
EOF
  # A bridge inside the namespace; no masquerading (there is nowhere to go), no default route
  # out of the namespace. The host-local allocations live in the state folder.
  cat > "${NODE_DIR}/cni/net.d/10-kosmos-e2e.conflist" << EOF
{
  "cniVersion": "1.0.0",
  "name": "kosmos-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "${POD_CIDR}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "${NODE_DIR}/cni/ipam"
      }
    }
  ]
}
EOF
}

start_containerd() {
  is_running containerd && return
  write_containerd_config
  node_exec
  spawn containerd "${NODE_EXEC[@]}" containerd --config "${NODE_DIR}/containerd.toml"
}

probe_containerd() {
  ctr --address "${CONTAINERD_SOCK}" version
}

# Imports image archives into the node's containerd, in the namespace the kubelet uses.
load_images() {
  local archive
  for archive in "$@"; do
    [[ -f "${archive}" ]] || die "no image archive ${archive}"
    log "importing $(basename "${archive}") into the node"
    ctr --address "${CONTAINERD_SOCK}" -n k8s.io images import "${archive}" > /dev/null || die "could not import ${archive} into the node's containerd"
  done
}

# The node's images: ours (e2e/images.sh), and those `make images` built if it ran. An archive
# is imported again only when it changed since the last import.
import_node_images() {
  local archives=() line archive stamp
  while read -r line; do
    archive="${line#* }"
    # The real executor image, when `make images` has built it, replaces our stop-gap.
    if [[ "${line%% *}" == "${EXECUTOR_IMAGE}" && -f "${REPO_DIR}/images/out/plugin-executor.oci.tar" ]]; then
      continue
    fi
    archives+=("${archive}")
  done < <("${E2E_DIR}/images.sh" --list)
  for archive in "${REPO_DIR}"/images/out/*.oci.tar; do
    [[ -f "${archive}" ]] && archives+=("${archive}")
  done
  mkdir -p "${NODE_DIR}/imported"
  for archive in "${archives[@]}"; do
    stamp="${NODE_DIR}/imported/$(printf '%s' "${archive}" | sha256sum | cut -c1-16)"
    if [[ -f "${stamp}" && ! "${archive}" -nt "${stamp}" ]]; then
      continue
    fi
    load_images "${archive}"
    touch "${stamp}"
  done
}

write_kubelet_config() {
  mkdir -p "${NODE_DIR}/kubelet" "${NODE_DIR}/pod-logs" "${NODE_DIR}/volume-plugins"
  # Pods resolve nothing: there is no DNS server and nothing outside to reach.
  : > "${NODE_DIR}/resolv.conf"
  cat > "${NODE_DIR}/kubelet.yaml" << EOF
# Written by e2e/cluster.sh: the local node's kubelet.
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: ${PKI}/kubelet-serving.crt
tlsPrivateKeyFile: ${PKI}/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${PKI}/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
# cgroup v1 with the cgroupfs driver (no systemd here); every pod below our own root, so that
# two nodes on one machine never touch each other's cgroups.
cgroupDriver: cgroupfs
cgroupRoot: ${CGROUP_ROOT}
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
podLogsDir: ${NODE_DIR}/pod-logs
volumePluginDir: ${NODE_DIR}/volume-plugins
resolvConf: ${NODE_DIR}/resolv.conf
# Imported images cannot be pulled again: never collect them, and never evict a test pod
# because a shared disk looks full.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
maxPods: 110
EOF
}

start_kubelet() {
  is_running kubelet && return
  write_kubelet_config
  node_exec
  spawn kubelet "${NODE_EXEC[@]}" "${KUBELET}" \
    --config "${NODE_DIR}/kubelet.yaml" \
    --kubeconfig "${STATE_DIR}/kubelet.kubeconfig" \
    --root-dir "${NODE_DIR}/kubelet" \
    --cert-dir "${NODE_DIR}/kubelet/pki" \
    --hostname-override "${NODE_NAME}" \
    --node-ip "${NODE_IP}" \
    --v 1
}

start_kube_proxy() {
  is_running kube-proxy && return
  cat > "${NODE_DIR}/kube-proxy.yaml" << EOF
# Written by e2e/cluster.sh: the local node's kube-proxy.
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: ${STATE_DIR}/kube-proxy.kubeconfig}
hostnameOverride: ${NODE_NAME}
mode: iptables
clusterCIDR: ${POD_CIDR}
bindAddress: ${NODE_IP}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
iptables: {localhostNodePorts: false}
# Zero leaves the machine-wide conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  node_exec
  spawn kube-proxy "${NODE_EXEC[@]}" "${KUBE_PROXY}" --config "${NODE_DIR}/kube-proxy.yaml"
}

probe_kube_proxy() {
  in_netns curl -fsS --max-time 2 http://127.0.0.1:10256/healthz
}

probe_node_ready() {
  [[ "$("${KUBECTL}" --kubeconfig "${HOST_KUBECONFIG}" get node "${NODE_NAME}" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" == True ]]
}

# Kills every process left in the node's mount namespace (container processes, shims), then the
# holder: with it go all the node's mounts and pod network namespaces.
stop_node() {
  local holder ns pid
  if is_running node; then
    holder="$(pid_of node)"
    ns="$(readlink "/proc/${holder}/ns/mnt")"
    if is_running containerd; then
      # Stop every container through containerd first, so that shims exit cleanly.
      local task
      for task in $(ctr --address "${CONTAINERD_SOCK}" -n k8s.io tasks list -q 2> /dev/null); do
        ctr --address "${CONTAINERD_SOCK}" -n k8s.io tasks kill -s SIGKILL "${task}" > /dev/null 2>&1 || true
      done
    fi
    stop containerd
    # Containers run in mount namespaces of their own: find what is left by our cgroups.
    local procs
    while read -r procs; do
      xargs -r kill -KILL < "${procs}" 2> /dev/null || true
    done < <(find "/sys/fs/cgroup/pids${CGROUP_ROOT}" "/sys/fs/cgroup/memory${CGROUP_ROOT}" -name cgroup.procs 2> /dev/null)
    for pid in /proc/[0-9]*; do
      pid="${pid#/proc/}"
      [[ "${pid}" == "${holder}" ]] && continue
      [[ "$(readlink "/proc/${pid}/ns/mnt" 2> /dev/null)" == "${ns}" ]] && kill -KILL "${pid}" 2> /dev/null
    done
    sleep 0.5
  fi
  stop node
  remove_cgroups
}

# ---------------------------------------------------------------------------------------------
# What the cluster serves: storage, and the virtual cluster's nodes

# rancher's local-path-provisioner under the class name the design uses. Claims get a folder
# under the node's state on the machine (the provisioner's helper pods make and remove it).
install_storage() {
  local dir="${NODE_DIR}/local-path"
  mkdir -p "${dir}"
  sed -e "s|@IMAGE@|${LOCAL_PATH_PROVISIONER_IMAGE}|g" -e "s|@HELPER_IMAGE@|${BUSYBOX_IMAGE}|g" \
    -e "s|@DIR@|${dir}|g" "${E2E_DIR}/manifests/storage.yaml" \
    | "${KUBECTL}" --kubeconfig "${HOST_KUBECONFIG}" apply --server-side --field-manager kosmos-e2e \
      -f - > /dev/null
}

probe_storage() {
  [[ "$("${KUBECTL}" --kubeconfig "${HOST_KUBECONFIG}" -n kosmos-e2e-storage get deployment \
    local-path-provisioner -o jsonpath='{.status.availableReplicas}')" == 1 ]]
}

# cert-manager for the chart's certManager mode: the release's CRDs, then its controller and CA
# injector as pods (e2e/manifests/cert-manager.yaml). The CRDs are applied by the same field
# manager every time, so a restart or a second checkout's `up` changes nothing.
install_cert_manager() {
  local k=("${KUBECTL}" --kubeconfig "${HOST_KUBECONFIG}")
  # Forced: they replace whatever an older checkout's chart test applied under these names.
  "${k[@]}" apply --server-side --force-conflicts --field-manager kosmos-e2e -f "${CERT_MANAGER_CRDS}" > /dev/null
  "${k[@]}" wait --for condition=Established --timeout 60s -f "${CERT_MANAGER_CRDS}" > /dev/null
  sed -e "s|@CONTROLLER_IMAGE@|${CERT_MANAGER_CONTROLLER_IMAGE}|g" \
    -e "s|@CAINJECTOR_IMAGE@|${CERT_MANAGER_CAINJECTOR_IMAGE}|g" "${E2E_DIR}/manifests/cert-manager.yaml" \
    | "${k[@]}" apply --server-side --field-manager kosmos-e2e -f - > /dev/null
}

probe_cert_manager() {
  local d
  for d in cert-manager cert-manager-cainjector; do
    [[ "$("${KUBECTL}" --kubeconfig "${HOST_KUBECONFIG}" -n kosmos-e2e-cert-manager get deployment \
      "${d}" -o jsonpath='{.status.availableReplicas}')" == 1 ]] || return 1
  done
}

# node1 and node2 of the virtual cluster have no kubelet (they stand for the tenant's nodes that
# Kosmos would join); this loop does what a kubelet's heartbeat does for them: renews each
# node's Lease every 10 s and its Ready condition every 40 s, so the virtual controller manager
# keeps them Ready and untainted for as long as the cluster runs.
start_node_heartbeat() {
  is_running node-heartbeat && return
  # shellcheck disable=SC2016 # expanded by the inner bash
  spawn node-heartbeat bash -c '
    set -u
    kubectl="$1" kubeconfig="$2"
    k() { "${kubectl}" --kubeconfig "${kubeconfig}" "$@"; }
    round=0
    while true; do
      now="$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)"
      for node in node1 node2; do
        if ((round % 4 == 0)); then
          k apply --server-side --field-manager kosmos-e2e-heartbeat -f - > /dev/null <<YAML || true
apiVersion: v1
kind: Node
metadata: {name: ${node}, labels: {kubernetes.io/hostname: ${node}}}
YAML
          k patch node "${node}" --subresource status --type merge -p "{\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"KosmosE2EHeartbeat\",\"message\":\"kept Ready by e2e/cluster.sh (no kubelet)\",\"lastHeartbeatTime\":\"${now}\"}]}}" > /dev/null || true
        fi
        uid="$(k get node "${node}" -o jsonpath={.metadata.uid} 2> /dev/null)" || continue
        k apply --server-side --force-conflicts --field-manager kosmos-e2e-heartbeat -f - > /dev/null <<YAML || true
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: ${node}
  namespace: kube-node-lease
  ownerReferences: [{apiVersion: v1, kind: Node, name: ${node}, uid: ${uid}}]
spec: {holderIdentity: ${node}, leaseDurationSeconds: 40, renewTime: "${now}"}
YAML
      done
      round=$((round + 1))
      sleep 10
    done' kosmos-e2e-node-heartbeat "${KUBECTL}" "${VIRTUAL_KUBECONFIG}" "${STATE_DIR}"
}

# On a fresh start, moves to the first block of ports whose veth subnet is not on this machine
# yet (another checkout's cluster has it) and records it, so that later calls use the same.
choose_port_base() {
  if ((PORT_BASE_PINNED == 0)) && ! any_running; then
    local base free=0
    for ((base = DEFAULT_PORT_BASE; base < DEFAULT_PORT_BASE + 2000; base += 100)); do
      set_ports "${base}"
      if ! subnet_in_use; then
        free=1
        break
      fi
    done
    ((free == 1)) || die "no free veth subnet for port blocks ${DEFAULT_PORT_BASE} to ${base}"
    if ((PORT_BASE != DEFAULT_PORT_BASE)); then
      log "ports ${DEFAULT_PORT_BASE}+ are taken (another cluster?); using ${PORT_BASE}+ and ${NODE_IP}"
    fi
    PORT_BASE_PINNED=1
  elif ! ip link show "${VETH_HOST}" > /dev/null 2>&1 && subnet_in_use; then
    die "10.213.${SUBNET_INDEX}.0/30 (port base ${PORT_BASE}) is in use by another device;" \
      "pick another KOSMOS_E2E_PORT_BASE"
  fi
  mkdir -p "${STATE_DIR}"
  echo "${PORT_BASE}" > "${PORT_BASE_FILE}"
}

# The address list is read whole first: `ip ... | grep -q` under pipefail fails when grep stops
# at the first match and ip dies writing the rest (SIGPIPE), which read as "not in use" and gave
# two clusters one subnet.
subnet_in_use() {
  local addresses
  addresses="$(ip -4 -o addr show)"
  grep -qE " 10\.213\.${SUBNET_INDEX}\.[0-9]+/" <<< "${addresses}"
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do
    is_running "${c}" && return 0
  done
  return 1
}

# Builds missing binaries and images before the state lock is taken: a cold build takes 10-20
# minutes, and other callers should wait on build.sh's own lock, not time out on ours.
ensure_binaries() {
  local bin
  for bin in "${KUBE_APISERVER}" "${KUBE_CONTROLLER_MANAGER}" "${KUBECTL}" "${ETCD}" "${KUBELET}" \
    "${KUBE_SCHEDULER}" "${KUBE_PROXY}" "${HELM}" "${KUSTOMIZE}" "${LOCAL_PATH_PROVISIONER}" \
    "${CERT_MANAGER_CONTROLLER}" "${CERT_MANAGER_CAINJECTOR}"; do
    if [[ ! -x "${bin}" ]]; then
      log "binaries missing from ${E2E_CACHE}; building them (e2e/build.sh; cold: see e2e/README.md)"
      "${E2E_DIR}/build.sh" >&2
      break
    fi
  done
  "${E2E_DIR}/images.sh"
}

# The tools the node needs from the machine's packages (.ci/run installs them).
check_node_tools() {
  local tool missing=()
  for tool in containerd ctr runc nsenter unshare ip iptables conntrack; do
    command -v "${tool}" > /dev/null || missing+=("${tool}")
  done
  [[ -x "${CNI_BIN_DIR}/bridge" && -x "${CNI_BIN_DIR}/host-local" && -x "${CNI_BIN_DIR}/loopback" ]] \
    || missing+=("CNI plugins in ${CNI_BIN_DIR}")
  ((${#missing[@]} == 0)) || die "missing: ${missing[*]}; apt-get install containerd runc" \
    "containernetworking-plugins iproute2 iptables conntrack util-linux (.ci/run does)"
  [[ "$(id -u)" == 0 ]] || die "the local node needs root (network namespace, mounts, cgroups)"
}

do_up() {
  check_node_tools
  # Picking a free veth subnet and taking it is one step for every checkout on the machine, or
  # two clusters starting at once (two clones' `make test`) could both pick the same one.
  take_subnet_lock
  choose_port_base
  setup_netns
  exec 6>&-
  make_pki
  write_admission_config
  mkdir -p "${LOG_DIR}" "${PIDS}"

  start_etcd
  wait_ready etcd probe_etcd

  start_apiserver host "${HOST_APISERVER_PORT}" "${HOST_SERVICE_CIDR}" Node,RBAC
  start_apiserver virtual "${VIRTUAL_APISERVER_PORT}" 10.97.0.0/16 RBAC
  wait_ready host-apiserver probe_https "${NODE_IP}" "${HOST_APISERVER_PORT}" readyz
  wait_ready virtual-apiserver probe_https "${NODE_IP}" "${VIRTUAL_APISERVER_PORT}" readyz

  write_kubeconfig "${HOST_KUBECONFIG}" kosmos-e2e-host "${HOST_APISERVER_PORT}" admin
  write_kubeconfig "${VIRTUAL_KUBECONFIG}" kosmos-e2e-virtual "${VIRTUAL_APISERVER_PORT}" admin
  write_kubeconfig "${STATE_DIR}/host-controller-manager.kubeconfig" kosmos-e2e-host \
    "${HOST_APISERVER_PORT}" controller-manager
  write_kubeconfig "${STATE_DIR}/virtual-controller-manager.kubeconfig" kosmos-e2e-virtual \
    "${VIRTUAL_APISERVER_PORT}" controller-manager
  write_kubeconfig "${STATE_DIR}/scheduler.kubeconfig" kosmos-e2e-host "${HOST_APISERVER_PORT}" scheduler
  write_kubeconfig "${STATE_DIR}/kubelet.kubeconfig" kosmos-e2e-host "${HOST_APISERVER_PORT}" kubelet
  write_kubeconfig "${STATE_DIR}/kube-proxy.kubeconfig" kosmos-e2e-host "${HOST_APISERVER_PORT}" kube-proxy
  echo "${HOST_SIDE_IP}" > "${STATE_DIR}/webhook-host"

  start_controller_manager host "${HOST_KCM_PORT}" "${HOST_SERVICE_CIDR}"
  start_controller_manager virtual "${VIRTUAL_KCM_PORT}" 10.97.0.0/16
  start_scheduler
  start_node
  start_containerd
  start_node_heartbeat
  wait_ready host-controller-manager probe_https 127.0.0.1 "${HOST_KCM_PORT}" healthz
  wait_ready virtual-controller-manager probe_https 127.0.0.1 "${VIRTUAL_KCM_PORT}" healthz
  wait_ready scheduler probe_https 127.0.0.1 "${SCHEDULER_PORT}" healthz
  wait_ready containerd probe_containerd
  import_node_images
  start_kubelet
  start_kube_proxy
  wait_ready kubelet probe_node_ready
  wait_ready kube-proxy probe_kube_proxy
  install_storage
  install_cert_manager
  wait_ready kubelet probe_storage
  wait_ready kubelet probe_cert_manager
  log "ready: KUBECONFIG=${HOST_KUBECONFIG} (host, node ${NODE_NAME} at ${NODE_IP}), ${VIRTUAL_KUBECONFIG} (virtual)"
}

do_down() {
  local i
  # Reverse order: the node before the control plane, controllers before the apiservers they
  # talk to, etcd last.
  stop node-heartbeat
  stop kube-proxy
  stop kubelet
  stop_node
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop "${COMPONENTS[i]}"
  done
  remove_netns
  # Everything but the lock, which a concurrent caller may be waiting on.
  find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +
  log "stopped; state removed"
}

do_status() {
  local c ok=0 pid
  for c in "${COMPONENTS[@]}"; do
    if is_running "${c}"; then
      pid="$(pid_of "${c}")"
      printf '%-28s running  pid %-8s %s\n' "${c}" "${pid}" "$(port_of "${c}")"
    else
      printf '%-28s stopped\n' "${c}"
      ok=1
    fi
  done
  if ((ok == 0)); then
    probe_https "${NODE_IP}" "${HOST_APISERVER_PORT}" readyz > /dev/null 2>&1 || {
      echo "host apiserver is not ready"
      ok=1
    }
    probe_https "${NODE_IP}" "${VIRTUAL_APISERVER_PORT}" readyz > /dev/null 2>&1 || {
      echo "virtual apiserver is not ready"
      ok=1
    }
    probe_node_ready > /dev/null 2>&1 || {
      echo "node ${NODE_NAME} is not Ready"
      ok=1
    }
  fi
  printf 'network namespace: %s (node IP %s, machine side %s)\n' "${NETNS}" "${NODE_IP}" "${HOST_SIDE_IP}"
  printf 'kubeconfigs: %s %s\nlogs: %s\n' "${HOST_KUBECONFIG}" "${VIRTUAL_KUBECONFIG}" "${LOG_DIR}"
  return "${ok}"
}

do_env() {
  printf 'export KUBECONFIG=%q\n' "${HOST_KUBECONFIG}"
  printf 'export KOSMOS_E2E_VIRTUAL_KUBECONFIG=%q\n' "${VIRTUAL_KUBECONFIG}"
  printf 'export KOSMOS_E2E_WEBHOOK_HOST=%q\n' "${HOST_SIDE_IP}"
  printf 'export KOSMOS_E2E_NETNS=%q\n' "${NETNS}"
  # $PATH stays literal on purpose: it expands in the shell that evals these lines.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:%q:%q:%q:"$PATH"\n' "${KUBERNETES_BIN_DIR}" "${ETCD_BIN_DIR}" \
    "${HELM_BIN_DIR}" "${KUSTOMIZE_BIN_DIR}"
}

# The components a fault drill may stop and start on their own: the control plane's stores and
# apiservers (everything else reconnects to them by itself), and the node's kubelet.
DRILL_COMPONENTS=(etcd host-apiserver virtual-apiserver kubelet)

check_drill_component() {
  local c
  for c in "${DRILL_COMPONENTS[@]}"; do
    [[ "$1" == "${c}" ]] && return 0
  done
  die "cannot stop or start '$1' on its own; one of: ${DRILL_COMPONENTS[*]}"
}

# Starts component $1 again with the flags `up` gives it, and waits until it is ready.
start_component() {
  case "$1" in
    etcd)
      start_etcd
      wait_ready etcd probe_etcd
      ;;
    host-apiserver)
      start_apiserver host "${HOST_APISERVER_PORT}" 10.96.0.0/16 Node,RBAC
      wait_ready host-apiserver probe_https "${NODE_IP}" "${HOST_APISERVER_PORT}" readyz
      ;;
    virtual-apiserver)
      start_apiserver virtual "${VIRTUAL_APISERVER_PORT}" 10.97.0.0/16 RBAC
      wait_ready virtual-apiserver probe_https "${NODE_IP}" "${VIRTUAL_APISERVER_PORT}" readyz
      ;;
    kubelet)
      start_kubelet
      wait_ready kubelet probe_node_ready
      wait_ready kubelet probe_storage
      ;;
  esac
}

# Removes registered users whose process is gone (a killed test run must not keep the cluster).
prune_users() {
  local f
  [[ -d "${USERS}" ]] || return 0
  for f in "${USERS}"/*; do
    [[ -e "${f}" ]] || continue
    kill -0 "$(basename "${f}")" 2> /dev/null || rm -f "${f}"
  done
}

# Machine-wide, held only while `up` picks a veth subnet and assigns it (not the state lock: that
# one is per checkout).
take_subnet_lock() {
  local lock=/run/lock/kosmos-e2e-subnets.lock
  mkdir -p "$(dirname "${lock}")"
  exec 6> "${lock}"
  flock -w 120 6 || die "waited 2 minutes for ${lock}; is another cluster.sh up stuck?"
}

# Serializes up/down/acquire/release between concurrent callers (parallel test binaries, two
# engineers' `make test` in one checkout).
take_lock() {
  mkdir -p "${STATE_DIR}"
  exec 9> "${STATE_DIR}/lock"
  flock -w 600 9 || die "waited 10 minutes for ${STATE_DIR}/lock; is another cluster.sh stuck?"
}

cmd="${1:-}"
case "${cmd}" in
  up)
    ensure_binaries
    take_lock
    do_up
    # Started or reused on purpose: with-cluster.sh must not stop it when its command ends. But a
    # test that calls `up` inside a with-cluster.sh run is not such a purpose: while users are
    # registered the marker stays, or `make test` would leave the cluster running.
    prune_users
    if [[ -z "$(ls -A "${USERS}" 2> /dev/null)" ]]; then
      rm -f "${STATE_DIR}/started-by-acquire"
    fi
    ;;
  down)
    take_lock
    do_down
    ;;
  status)
    do_status
    ;;
  env)
    do_env
    ;;
  load-image)
    shift
    [[ $# -gt 0 ]] || die "usage: $0 load-image ARCHIVE..."
    is_running containerd || die "the node is not running; e2e/cluster.sh up first"
    load_images "$@"
    ;;
  import-images)
    is_running containerd || die "the node is not running; e2e/cluster.sh up first"
    import_node_images
    ;;
  exec)
    shift
    [[ $# -gt 0 ]] || die "usage: $0 exec COMMAND [ARG...]"
    [[ -e "/run/netns/${NETNS}" ]] || die "the cluster is not running; e2e/cluster.sh up first"
    exec "${NETNS_EXEC[@]}" "$@"
    ;;
  stop-component | kill-component | start-component)
    [[ $# -eq 2 ]] || die "usage: $0 ${cmd} NAME"
    check_drill_component "$2"
    [[ -f "${PORT_BASE_FILE}" && -e "/run/netns/${NETNS}" ]] \
      || die "the cluster of ${STATE_DIR} is not running; e2e/cluster.sh up first"
    take_lock
    if [[ "${cmd}" == stop-component ]]; then
      stop "$2"
    elif [[ "${cmd}" == kill-component ]]; then
      stop "$2" KILL
    else
      start_component "$2"
    fi
    ;;
  acquire)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || die "usage: $0 acquire PID"
    ensure_binaries
    take_lock
    # Only a cluster that acquire itself started may be stopped again by release.
    if ! any_running; then
      touch "${STATE_DIR}/started-by-acquire"
    fi
    do_up
    mkdir -p "${USERS}"
    touch "${USERS}/$2"
    ;;
  release)
    [[ "${2:-}" =~ ^[0-9]+$ ]] || die "usage: $0 release PID"
    take_lock
    rm -f "${USERS}/$2"
    prune_users
    if [[ -f "${STATE_DIR}/started-by-acquire" ]]; then
      if [[ -z "$(ls -A "${USERS}" 2> /dev/null)" ]]; then
        do_down
      else
        log "leaving the cluster running for $(find "${USERS}" -mindepth 1 | wc -l) other user(s)"
      fi
    elif any_running; then
      # Said out loud: a cluster left running after `make test` is otherwise a puzzle. (Nothing
      # running: the start failed before there was anything to leave, and saying otherwise
      # would hide that.)
      log "leaving the cluster running: it was already running when this run began (cluster.sh up," \
        "make cluster-up or a plain cargo test started it); stop it with make cluster-down"
    fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
