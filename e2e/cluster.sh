#!/usr/bin/env bash
# Runs two real Kubernetes control planes on loopback for the tests and `make demo`:
#
#   host     etcd + kube-apiserver + kube-controller-manager: CRDs, VirtualClusters, plugins,
#            executor Jobs, the operator and the webhook live here.
#   virtual  a second kube-apiserver (same etcd, own prefix) + its own kube-controller-manager:
#            plays the virtual cluster that plugins install into.
#
# Usage: e2e/cluster.sh up        start what is not running (idempotent), wait until ready
#        e2e/cluster.sh down      stop every process this script started, remove the state
#        e2e/cluster.sh status    show each component; exit 1 unless all are up
#        e2e/cluster.sh env       print `export` lines: eval "$(e2e/cluster.sh env)"
#
# Internal, used by e2e/with-cluster.sh so that several concurrent users share one cluster and
# the last one out stops it only if none of them found it already running:
#        e2e/cluster.sh acquire PID   up, and register PID as a user
#        e2e/cluster.sh release PID   unregister PID; down if the cluster was started by acquire
#                                     and no registered user is still alive
#
# Ports (all on 127.0.0.1), a block from a base port, 26400 unless taken:
#   base+0  etcd client (plain http, loopback only)     base+1  etcd peer
#   base+43 host kube-apiserver (https)                 base+44 virtual kube-apiserver (https)
#   base+57 host kube-controller-manager (https)        base+58 virtual kube-controller-manager
# When a port of the 26400 block is taken (another checkout's cluster, a CI clone next to a
# developer's), `up` takes the next free block of 100 (26500, ...) and records it in the state;
# `status` shows the ports. KOSMOS_E2E_PORT_BASE pins the base (and then a taken port is an error).
# State: e2e/.state/ (KOSMOS_E2E_STATE): kubeconfigs, pki/, pids/, logs/, etcd/.
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

COMPONENTS=(etcd host-apiserver virtual-apiserver host-controller-manager virtual-controller-manager)

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
    *) die "unknown component $1" ;;
  esac
}

port_of() {
  case "$1" in
    etcd) echo "${ETCD_PORT}" ;;
    host-apiserver) echo "${HOST_APISERVER_PORT}" ;;
    virtual-apiserver) echo "${VIRTUAL_APISERVER_PORT}" ;;
    host-controller-manager) echo "${HOST_KCM_PORT}" ;;
    virtual-controller-manager) echo "${VIRTUAL_KCM_PORT}" ;;
    *) die "unknown component $1" ;;
  esac
}

port_in_use() {
  (exec 3<> "/dev/tcp/127.0.0.1/$1") 2> /dev/null
}

# Starts component $1 in its own session (so a Ctrl-C in the terminal that ran `make test` or a
# test binary exiting does not take it down) with all output in its log. The lock's file
# descriptor is closed for the child, or the daemon would hold the lock for its whole life.
spawn() {
  local name="$1"
  shift
  local port
  port="$(port_of "${name}")"
  if port_in_use "${port}"; then
    die "port ${port} (for ${name}) is taken by another process; stop it, or move all ports" \
      "with KOSMOS_E2E_PORT_BASE (now ${PORT_BASE}); see: ss -ltnp 'sport = :${port}'"
  fi
  mkdir -p "${PIDS}" "${LOG_DIR}"
  log "starting ${name} on 127.0.0.1:${port} (log: ${LOG_DIR}/${name}.log)"
  setsid "$@" > "${LOG_DIR}/${name}.log" 2>&1 < /dev/null 9>&- &
  echo "$!" > "${PIDS}/${name}.pid"
}

# Stops component $1 if it is ours and alive: TERM, then KILL after 15 s.
stop() {
  local name="$1" pid
  if ! is_running "${name}"; then
    rm -f "${PIDS}/${name}.pid"
    return
  fi
  pid="$(pid_of "${name}")"
  log "stopping ${name} (pid ${pid})"
  kill -TERM "${pid}" 2> /dev/null || true
  local i
  for ((i = 0; i < 150; i++)); do
    kill -0 "${pid}" 2> /dev/null || break
    sleep 0.1
  done
  if kill -0 "${pid}" 2> /dev/null; then
    log "${name} (pid ${pid}) ignored TERM for 15 s; killing it"
    kill -KILL "${pid}" 2> /dev/null || true
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
  curl -fsS --max-time 2 "http://127.0.0.1:${ETCD_PORT}/health" | grep -q '"health":"true"'
}

# /readyz and /healthz are readable without credentials (system:public-info-viewer), so the probe
# also proves that the serving certificate verifies against our CA.
probe_https() {
  curl -fsS --max-time 2 --cacert "${PKI}/ca.crt" "https://127.0.0.1:$1/$2"
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
  # Names a pod would use for the in-cluster API, plus loopback, where the tests reach it.
  local in_cluster="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
  in_cluster+=",DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1"
  issue_cert host-apiserver "/CN=kube-apiserver" serverAuth "${in_cluster},IP:10.96.0.1"
  issue_cert virtual-apiserver "/CN=kube-apiserver" serverAuth "${in_cluster},IP:10.97.0.1"
  issue_cert host-controller-manager-serving "/CN=kube-controller-manager" serverAuth \
    "DNS:localhost,IP:127.0.0.1"
  issue_cert virtual-controller-manager-serving "/CN=kube-controller-manager" serverAuth \
    "DNS:localhost,IP:127.0.0.1"
  # system:masters may do anything, impersonation included (tests act as ServiceAccounts).
  issue_cert admin "/O=system:masters/CN=kosmos-e2e-admin" clientAuth
  # The identity RBAC's bootstrap policy grants the controller manager's permissions to.
  issue_cert controller-manager "/CN=system:kube-controller-manager" clientAuth
  # The apiserver's identity towards aggregated APIs (metrics-server in a plugin, say); the
  # apiservers trust it only under this name.
  issue_cert front-proxy-client "/CN=front-proxy-client" clientAuth
  # For the kubelet a later issue adds (logs, exec); harmless until then.
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
    server: https://127.0.0.1:${port}
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
  spawn etcd "${ETCD}" \
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
  # Node authorizer for the kubelet a later issue adds. The endpoint reconciler is off because
  # the `kubernetes` Service may not point at a loopback address; until pods run here nothing
  # needs it (the kubelet issue gives the apiserver a routable address and turns it back on).
  spawn "${cluster}-apiserver" "${KUBE_APISERVER}" \
    --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --etcd-prefix "/kosmos-e2e/${cluster}" \
    --bind-address 127.0.0.1 \
    --advertise-address 127.0.0.1 \
    --secure-port "${port}" \
    --tls-cert-file "${PKI}/${cluster}-apiserver.crt" \
    --tls-private-key-file "${PKI}/${cluster}-apiserver.key" \
    --client-ca-file "${PKI}/ca.crt" \
    --authorization-mode "${authz}" \
    --enable-admission-plugins NodeRestriction,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,ValidatingAdmissionPolicy \
    --admission-control-config-file "${ADMISSION_CONFIG}" \
    --service-cluster-ip-range "${cidr}" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local/${cluster}" \
    --service-account-key-file "${PKI}/${cluster}-sa.pub" \
    --service-account-signing-key-file "${PKI}/${cluster}-sa.key" \
    --kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
    --requestheader-client-ca-file "${PKI}/ca.crt" \
    --requestheader-allowed-names front-proxy-client \
    --requestheader-username-headers X-Remote-User \
    --requestheader-group-headers X-Remote-Group \
    --requestheader-extra-headers-prefix X-Remote-Extra- \
    --proxy-client-cert-file "${PKI}/front-proxy-client.crt" \
    --proxy-client-key-file "${PKI}/front-proxy-client.key" \
    --endpoint-reconciler-type none \
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
  spawn "${cluster}-controller-manager" "${KUBE_CONTROLLER_MANAGER}" \
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
    --profiling=false
}

# On a fresh start, moves to the first block of ports that is entirely free and records it, so
# that later calls (and `status`) use the same ports.
choose_port_base() {
  # A running component (state from before ports were recorded) keeps the ports it has.
  if ((PORT_BASE_PINNED == 0)) && ! any_running; then
    local base port free
    for ((base = DEFAULT_PORT_BASE; base < DEFAULT_PORT_BASE + 2000; base += 100)); do
      set_ports "${base}"
      free=1
      for port in "${ETCD_PORT}" "${ETCD_PEER_PORT}" "${HOST_APISERVER_PORT}" \
        "${VIRTUAL_APISERVER_PORT}" "${HOST_KCM_PORT}" "${VIRTUAL_KCM_PORT}"; do
        if port_in_use "${port}"; then
          free=0
          break
        fi
      done
      ((free == 1)) && break
    done
    ((free == 1)) || die "no free block of ports between ${DEFAULT_PORT_BASE} and ${base}"
    if ((PORT_BASE != DEFAULT_PORT_BASE)); then
      log "ports ${DEFAULT_PORT_BASE}+ are taken (another cluster?); using ${PORT_BASE}+"
    fi
    PORT_BASE_PINNED=1
  fi
  echo "${PORT_BASE}" > "${PORT_BASE_FILE}"
}

any_running() {
  local c
  for c in "${COMPONENTS[@]}"; do
    is_running "${c}" && return 0
  done
  return 1
}

# Starts whatever is not running and waits until everything is ready. Prints nothing on stdout.
# Builds missing binaries before the state lock is taken: a cold build takes 10-20 minutes, and
# other callers should wait on build.sh's own lock, not time out on ours.
ensure_binaries() {
  if [[ ! -x "${KUBE_APISERVER}" || ! -x "${KUBE_CONTROLLER_MANAGER}" || ! -x "${KUBECTL}" \
    || ! -x "${ETCD}" ]]; then
    log "binaries missing from ${E2E_CACHE}; building them (e2e/build.sh; cold: see e2e/README.md)"
    "${E2E_DIR}/build.sh" >&2
  fi
}

do_up() {
  make_pki
  write_admission_config
  mkdir -p "${LOG_DIR}" "${PIDS}"
  choose_port_base

  start_etcd
  wait_ready etcd probe_etcd

  start_apiserver host "${HOST_APISERVER_PORT}" 10.96.0.0/16 Node,RBAC
  start_apiserver virtual "${VIRTUAL_APISERVER_PORT}" 10.97.0.0/16 RBAC
  wait_ready host-apiserver probe_https "${HOST_APISERVER_PORT}" readyz
  wait_ready virtual-apiserver probe_https "${VIRTUAL_APISERVER_PORT}" readyz

  write_kubeconfig "${HOST_KUBECONFIG}" kosmos-e2e-host "${HOST_APISERVER_PORT}" admin
  write_kubeconfig "${VIRTUAL_KUBECONFIG}" kosmos-e2e-virtual "${VIRTUAL_APISERVER_PORT}" admin
  write_kubeconfig "${STATE_DIR}/host-controller-manager.kubeconfig" kosmos-e2e-host \
    "${HOST_APISERVER_PORT}" controller-manager
  write_kubeconfig "${STATE_DIR}/virtual-controller-manager.kubeconfig" kosmos-e2e-virtual \
    "${VIRTUAL_APISERVER_PORT}" controller-manager

  start_controller_manager host "${HOST_KCM_PORT}" 10.96.0.0/16
  start_controller_manager virtual "${VIRTUAL_KCM_PORT}" 10.97.0.0/16
  wait_ready host-controller-manager probe_https "${HOST_KCM_PORT}" healthz
  wait_ready virtual-controller-manager probe_https "${VIRTUAL_KCM_PORT}" healthz
  log "ready: KUBECONFIG=${HOST_KUBECONFIG} (host), ${VIRTUAL_KUBECONFIG} (virtual)"
}

do_down() {
  local i
  # Reverse order: controllers before the apiservers they talk to, etcd last.
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    stop "${COMPONENTS[i]}"
  done
  # Everything but the lock, which a concurrent caller may be waiting on.
  find "${STATE_DIR}" -mindepth 1 -maxdepth 1 ! -name lock -exec rm -rf {} +
  log "stopped; state removed"
}

do_status() {
  local c ok=0 pid
  for c in "${COMPONENTS[@]}"; do
    if is_running "${c}"; then
      pid="$(pid_of "${c}")"
      printf '%-28s running  pid %-8s 127.0.0.1:%s\n' "${c}" "${pid}" "$(port_of "${c}")"
    else
      printf '%-28s stopped\n' "${c}"
      ok=1
    fi
  done
  if ((ok == 0)); then
    probe_https "${HOST_APISERVER_PORT}" readyz > /dev/null 2>&1 || {
      echo "host apiserver is not ready"
      ok=1
    }
    probe_https "${VIRTUAL_APISERVER_PORT}" readyz > /dev/null 2>&1 || {
      echo "virtual apiserver is not ready"
      ok=1
    }
  fi
  printf 'kubeconfigs: %s %s\nlogs: %s\n' "${HOST_KUBECONFIG}" "${VIRTUAL_KUBECONFIG}" "${LOG_DIR}"
  return "${ok}"
}

do_env() {
  printf 'export KUBECONFIG=%q\n' "${HOST_KUBECONFIG}"
  printf 'export KOSMOS_E2E_VIRTUAL_KUBECONFIG=%q\n' "${VIRTUAL_KUBECONFIG}"
  # $PATH stays literal on purpose: it expands in the shell that evals these lines.
  # shellcheck disable=SC2016
  printf 'export PATH=%q:%q:%q:%q:"$PATH"\n' "${KUBERNETES_BIN_DIR}" "${ETCD_BIN_DIR}" \
    "${HELM_BIN_DIR}" "${KUSTOMIZE_BIN_DIR}"
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
    fi
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
