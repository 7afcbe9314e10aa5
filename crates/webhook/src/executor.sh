# The plugin executor: what a mutated executor Job runs (as `/bin/sh -c <this script>`).
#
# Every value that comes from a VirtualClusterPlugin reaches this script as an environment
# variable set by the webhook, and is only ever expanded inside double quotes, so names, paths,
# URLs and values can never become shell syntax. The one exception, by design, is
# SUCCESS_STATE_COMMAND, which is run with `sh -c`.
#
# Inputs (all optional unless noted; paths are inside the executor container):
#   PLUGIN_ACTION          install | uninstall (required)
#   PLUGIN_NAME            the plugin, for messages
#   PLUGIN_TIMEOUT_SECONDS bound on the whole attempt (default 600)
#   PLUGIN_WORK_DIR        writable scratch folder (required)
#   TERMINATION_LOG        where the outcome goes (default /dev/termination-log)
#   KUBECONFIG             the virtual cluster's kubeconfig (required)
#   For each source S in CHART, VALUES, YAML:
#     S_PATH               the file or folder the install reads
#     S_URI, S_SHA256      fetch S_URI to S_DOWNLOAD first, check its SHA-256
#     S_DOWNLOAD           where the fetched file goes
#     S_UNPACK=true        S_DOWNLOAD is a .tgz to unpack into the folder S_PATH
#   CHART_REPO, CHART_NAME, CHART_VERSION   a chart from a repository (instead of CHART_PATH)
#   CHART_RELEASE, CHART_NAMESPACE, CHART_WAIT=true, CHART_VALUES (inline YAML text)
#   YAML_NAMESPACE         default namespace for manifests that name none
#   SUCCESS_STATE_COMMAND  shell, retried until it exits 0 or the time limit passes
#   VIRTUAL_CLUSTER, VIRTUAL_CLUSTER_NAMESPACE   the VirtualCluster installed into
#   PLUGIN_OPTION_COUNT    how many of the VirtualCluster's pluginOptions follow; for each i:
#     PLUGIN_OPTION_<i>_NAME   its name (letters, digits, '_', '-')
#     PLUGIN_OPTION_<i>_VALUE  its value, or
#     PLUGIN_OPTION_<i>_FILE   the file holding it (a Secret or ConfigMap key; its content is
#                              never printed) and PLUGIN_OPTION_<i>_SOURCE, where it comes from

# Exit status: 0 done; 2 bad input; 3 fetch; 4 kubectl; 5 helm; 6 successStateCommand; 7 the
# virtual cluster's API server does not answer.

set -u

started=$(date +%s)
timeout_seconds=${PLUGIN_TIMEOUT_SECONDS:-600}
deadline=$((started + timeout_seconds))
termination_log=${TERMINATION_LOG:-/dev/termination-log}
action=${PLUGIN_ACTION:-}
plugin=${PLUGIN_NAME:-plugin}

say() {
  printf '%s\n' "executor: $*" >&2
}

# Writes the outcome for the operator (kept short: Kubernetes keeps at most 4096 bytes) and
# exits with the given status.
finish() {
  status=$1
  shift
  printf '%s\n' "$*" | cut -c1-1000 > "$termination_log" 2> /dev/null || true
  say "$*"
  exit "$status"
}

remaining() {
  now=$(date +%s)
  left=$((deadline - now))
  if [ "$left" -lt 1 ]; then left=1; fi
  echo "$left"
}

# Runs a command bounded by what is left of the time limit, where `timeout` exists.
bounded() {
  if command -v timeout > /dev/null 2>&1; then
    timeout "$(remaining)" "$@"
  else
    "$@"
  fi
}

[ -n "${PLUGIN_WORK_DIR:-}" ] || finish 2 "PLUGIN_WORK_DIR is not set"
[ -n "${KUBECONFIG:-}" ] || finish 2 "KUBECONFIG is not set"
mkdir -p -- "$PLUGIN_WORK_DIR" || finish 2 "cannot create $PLUGIN_WORK_DIR"

sha256_of() {
  if command -v sha256sum > /dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    openssl dgst -sha256 -r "$1" | cut -d' ' -f1
  fi
}

# fetch SOURCE: downloads ${SOURCE}_URI if set, checks ${SOURCE}_SHA256, unpacks if asked.
# Variable names are built from fixed words only; the values stay in variables.
fetch() {
  source=$1
  uri='' download='' want='' unpack='' path=''
  eval "uri=\${${source}_URI:-}"
  [ -n "$uri" ] || return 0
  eval "download=\${${source}_DOWNLOAD:-}"
  eval "want=\${${source}_SHA256:-}"
  eval "unpack=\${${source}_UNPACK:-}"
  eval "path=\${${source}_PATH:-}"
  [ -n "$download" ] || finish 2 "${source}_DOWNLOAD is not set for ${source}_URI"
  mkdir -p -- "$(dirname -- "$download")"
  say "fetching $uri"
  if command -v curl > /dev/null 2>&1; then
    bounded curl --fail --silent --show-error --location --max-redirs 5 \
      --proto '=http,https' --output "$download" -- "$uri" \
      || finish 3 "fetching $uri failed"
  else
    bounded wget -q -O "$download" -- "$uri" || finish 3 "fetching $uri failed"
  fi
  if [ -n "$want" ]; then
    got=$(sha256_of "$download")
    [ "$got" = "$want" ] || finish 3 "sha256 of $uri is $got, expected $want"
  fi
  if [ "$unpack" = "true" ]; then
    mkdir -p -- "$path"
    tar -xzf "$download" -C "$path" || finish 3 "unpacking $uri failed"
  fi
}

# --- Per-cluster parameters -----------------------------------------------------------------
# One set of values, built by kubectl (which serializes any text safely, so nothing here quotes
# a value): ConfigMaps kosmos-virtual-cluster (name, namespace, server), kosmos-plugin (name) and
# kosmos-options (one key per option). Helm gets their data as a values file under `kosmos`;
# a kustomization gets them as local-config ConfigMaps in kosmos-options.yaml.

kosmos_dir="$PLUGIN_WORK_DIR/kosmos"

# Fails naming the option when a value from a Secret or ConfigMap is missing (the volume is
# optional, so a missing Secret or key leaves the file out instead of the pod pending).
check_options() {
  i=0 oname='' ofile='' osource=''
  while [ "$i" -lt "${PLUGIN_OPTION_COUNT:-0}" ]; do
    eval "oname=\${PLUGIN_OPTION_${i}_NAME:-}"
    eval "ofile=\${PLUGIN_OPTION_${i}_FILE:-}"
    eval "osource=\${PLUGIN_OPTION_${i}_SOURCE:-}"
    if [ -n "$ofile" ] && [ ! -f "$ofile" ]; then
      finish 2 "plugin option $oname: $osource not found (the Secret or ConfigMap, or its key, is missing in the VirtualCluster's namespace)"
    fi
    i=$((i + 1))
  done
}

# kosmos_configmap WHICH KUBECTL-FLAG...: `kubectl create configmap kosmos-WHICH` built locally
# (never sent to a cluster) from the parameters, printed as the flags ask.
kosmos_configmap() {
  which=$1
  shift
  set -- create configmap "kosmos-$which" --dry-run=client "$@"
  case "$which" in
    virtual-cluster)
      set -- "$@" "--from-literal=name=${VIRTUAL_CLUSTER:-}" \
        "--from-literal=namespace=${VIRTUAL_CLUSTER_NAMESPACE:-}" \
        "--from-file=server=$kosmos_dir/server"
      ;;
    plugin)
      set -- "$@" "--from-literal=name=$plugin"
      ;;
    options)
      i=0 oname='' ofile='' ovalue=''
      while [ "$i" -lt "${PLUGIN_OPTION_COUNT:-0}" ]; do
        eval "oname=\${PLUGIN_OPTION_${i}_NAME:-}"
        eval "ofile=\${PLUGIN_OPTION_${i}_FILE:-}"
        if [ -n "$ofile" ]; then
          set -- "$@" "--from-file=$oname=$ofile"
        else
          eval "ovalue=\${PLUGIN_OPTION_${i}_VALUE:-}"
          set -- "$@" "--from-literal=$oname=$ovalue"
        fi
        i=$((i + 1))
      done
      ;;
  esac
  kubectl "$@"
}

# Prepares $kosmos_dir/server (the virtual apiserver's URL, from the kubeconfig the install uses)
# and checks that every value is text: kubectl keeps other bytes apart (binaryData), where
# neither Helm nor a replacement would find them.
prepare_parameters() {
  [ -f "$kosmos_dir/server" ] && return 0
  check_options
  mkdir -p "$kosmos_dir" || finish 2 "cannot create $kosmos_dir"
  server=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}') \
    || finish 2 "cannot read the server of the virtual cluster's kubeconfig"
  printf '%s' "$server" > "$kosmos_dir/server"
  for which in virtual-cluster plugin options; do
    # shellcheck disable=SC2016 # a Go template for kubectl, not shell
    binary=$(kosmos_configmap "$which" -o go-template='{{range $k, $v := .binaryData}}{{$k}} {{end}}') \
      || finish 2 "cannot read the plugin options"
    [ -z "$binary" ] || finish 2 "plugin option(s) ${binary% }: the value is not UTF-8 text"
  done
}

# The data of ConfigMap kosmos-WHICH as a JSON object (kubectl's own encoding).
kosmos_json() {
  out=$(kosmos_configmap "$1" -o 'jsonpath={.data}') || return 1
  [ -n "$out" ] || out='{}'
  printf '%s' "$out"
}

# Writes the Helm values file with the parameters under `kosmos` and prints its path.
kosmos_values() {
  prepare_parameters
  file="$kosmos_dir/values.json"
  vc=$(kosmos_json virtual-cluster) || finish 2 "cannot build the kosmos values"
  pl=$(kosmos_json plugin) || finish 2 "cannot build the kosmos values"
  op=$(kosmos_json options) || finish 2 "cannot build the kosmos values"
  printf '{"kosmos":{"virtualCluster":%s,"plugin":%s,"options":%s}}\n' "$vc" "$pl" "$op" > "$file" \
    || finish 2 "cannot write $file"
  echo "$file"
}

# Writes the three ConfigMaps, marked local-config (kustomize uses them as sources for
# replacements and leaves them out of what it applies), to the file $1.
kosmos_options_file() {
  prepare_parameters
  : > "$1" || return 1
  for which in virtual-cluster plugin options; do
    kosmos_configmap "$which" -o yaml \
      | kubectl annotate --local -f - config.kubernetes.io/local-config=true -o yaml >> "$1" \
      || return 1
    echo '---' >> "$1"
  done
}

# The folder to hand to `kubectl -k` for the kustomization in $1: $1 itself, or, when its
# kustomization names kosmos-options.yaml, a copy of it in the work folder with that file added.
kustomization_with_options() {
  src=$1
  kfile=''
  for f in kustomization.yaml kustomization.yml Kustomization; do
    if [ -f "$src/$f" ]; then kfile=$f; break; fi
  done
  if [ -z "$kfile" ] || ! grep -q 'kosmos-options\.yaml' "$src/$kfile"; then
    echo "$src"
    return 0
  fi
  [ ! -e "$src/kosmos-options.yaml" ] \
    || finish 4 "$src holds kosmos-options.yaml; the executor writes that file, remove it from the plugin"
  dest="$PLUGIN_WORK_DIR/kustomization"
  rm -rf "$dest"
  if ! { mkdir -p "$dest" && cp -R "$src/." "$dest/" && chmod -R u+w "$dest"; }; then
    finish 4 "cannot copy $src into the work folder"
  fi
  kosmos_options_file "$dest/kosmos-options.yaml" \
    || finish 4 "cannot write the plugin options for $src"
  echo "$dest"
}

# The folder to hand to `kubectl -k`, or empty when PATH is not a kustomization.
kustomization_dir() {
  for f in kustomization.yaml kustomization.yml Kustomization; do
    if [ -f "$1/$f" ]; then
      echo "$1"
      return
    fi
  done
}

# The kubeconfig kubectl uses for manifests. With YAML_NAMESPACE it is the virtual cluster's
# kubeconfig plus a first file whose current context has that namespace, so it is the default for
# manifests that name none, while manifests that name another namespace still go there
# (`kubectl --namespace` would refuse those).
yaml_kubeconfig() {
  if [ -z "${YAML_NAMESPACE:-}" ]; then
    echo "$KUBECONFIG"
    return
  fi
  overlay="$PLUGIN_WORK_DIR/namespace.kubeconfig"
  cluster=$(kubectl config view --minify -o jsonpath='{.contexts[0].context.cluster}') || return 1
  user=$(kubectl config view --minify -o jsonpath='{.contexts[0].context.user}') || return 1
  rm -f "$overlay"
  kubectl --kubeconfig "$overlay" config set-context kosmos-plugin --cluster="$cluster" \
    --user="$user" --namespace="$YAML_NAMESPACE" > /dev/null || return 1
  kubectl --kubeconfig "$overlay" config use-context kosmos-plugin > /dev/null || return 1
  echo "$overlay:$KUBECONFIG"
}

# How often one kubectl apply or delete is tried when it fails for a reason that passes by
# itself, and the first pause between tries (doubled each time: 2, 4, 8 s), within the time limit.
kubectl_attempts=4
kubectl_first_pause=2

# Prints what kind of passing failure the kubectl error output in file $1 shows, or fails when
# it shows none (a refused or invalid object fails the same way every time: no retry).
transient_reason() {
  if grep -qE 'AlreadyExists|already exists' "$1"; then
    echo "an object was created meanwhile (AlreadyExists: another install applies it too?)"
  elif grep -qE 'the object has been modified|Conflict' "$1"; then
    echo "an object was changed meanwhile (Conflict)"
  elif grep -qE 'no matches for kind|ensure CRDs are installed first' "$1"; then
    echo "a kind is not served yet (a CustomResourceDefinition applied just before?)"
  elif grep -qE 'Internal error occurred|currently unable to handle the request|[Tt]oo many requests|unable to return a response in the time allotted|etcdserver: request timed out' "$1"; then
    echo "the API server could not serve the request now"
  elif grep -qE 'connection refused|connection reset|i/o timeout|TLS handshake timeout|unexpected EOF|context deadline exceeded|Client.Timeout' "$1"; then
    echo "the connection to the API server failed"
  else
    return 1
  fi
}

# retry_kubectl WHAT COMMAND...: runs COMMAND (a kubectl call); when it fails for a passing reason
# (see transient_reason) it is run again, at most $kubectl_attempts times in all, saying why.
# kubectl apply and delete --ignore-not-found are idempotent: what the failed try did already is
# unchanged by the next. On failure, $kubectl_error holds the last line kubectl printed.
retry_kubectl() {
  what=$1
  shift
  errors="$PLUGIN_WORK_DIR/kubectl-errors"
  attempt=1
  pause=$kubectl_first_pause
  kubectl_error=''
  while :; do
    "$@" 2> "$errors"
    status=$?
    cat "$errors" >&2
    [ "$status" -eq 0 ] && return 0
    kubectl_error=$(grep . "$errors" | tail -n 1)
    reason=$(transient_reason "$errors") || return "$status"
    if [ "$attempt" -ge "$kubectl_attempts" ]; then
      say "$what failed $attempt times; giving up"
      return "$status"
    fi
    if [ $(($(date +%s) + pause)) -ge "$deadline" ]; then
      say "$what failed; no time left to try again"
      return "$status"
    fi
    say "$what failed (try $attempt of $kubectl_attempts): $reason; trying again in ${pause}s"
    sleep "$pause"
    attempt=$((attempt + 1))
    pause=$((pause * 2))
  done
}

# yaml_kubectl VERB [FLAGS...]: kubectl VERB on YAML_PATH: -k for a kustomization, else -R -f.
yaml_kubectl() {
  verb=$1
  shift
  path=${YAML_PATH:-}
  [ -e "$path" ] || finish 4 "manifests not found at $path"
  config=$(yaml_kubeconfig) || finish 4 "cannot set namespace $YAML_NAMESPACE in the kubeconfig"
  if [ -d "$path" ] && [ -n "$(kustomization_dir "$path")" ]; then
    # In a subshell's $(...) a `finish` would only end the subshell: check its status.
    built=$(kustomization_with_options "$path") || exit
    say "kubectl $verb -k $path"
    retry_kubectl "kubectl $verb -k $path" \
      bounded env KUBECONFIG="$config" kubectl "$verb" "$@" -k "$built" \
      || finish 4 "kubectl $verb -k $path failed: $kubectl_error"
  else
    say "kubectl $verb -f $path"
    retry_kubectl "kubectl $verb -f $path" \
      bounded env KUBECONFIG="$config" kubectl "$verb" "$@" -R -f "$path" \
      || finish 4 "kubectl $verb -f $path failed: $kubectl_error"
  fi
}

yaml_install() {
  yaml_kubectl apply
}

yaml_uninstall() {
  yaml_kubectl delete --ignore-not-found
}

chart_install() {
  release=${CHART_RELEASE:?CHART_RELEASE is not set}
  namespace=${CHART_NAMESPACE:-default}
  # Flags first, then `--`, then the release and the chart: whatever a value holds (a leading
  # `-` included), helm takes it as the release or the chart, never as a flag.
  set -- --namespace "$namespace" --create-namespace
  if [ -n "${CHART_PATH:-}" ]; then
    [ -e "$CHART_PATH" ] || finish 5 "chart not found at $CHART_PATH"
    chart=$CHART_PATH
  else
    case "${CHART_REPO:-}" in
      oci://*) chart="${CHART_REPO%/}/${CHART_NAME:-}" ;;
      *)
        chart=${CHART_NAME:-}
        set -- "$@" --repo "${CHART_REPO:-}"
        ;;
    esac
    if [ -n "${CHART_VERSION:-}" ]; then set -- "$@" --version "$CHART_VERSION"; fi
  fi
  if [ -n "${VALUES_PATH:-}" ]; then
    [ -f "$VALUES_PATH" ] || finish 5 "values file not found at $VALUES_PATH"
    set -- "$@" --values "$VALUES_PATH"
  fi
  if [ -n "${CHART_VALUES:-}" ]; then
    printf '%s\n' "$CHART_VALUES" > "$PLUGIN_WORK_DIR/values.yaml"
    set -- "$@" --values "$PLUGIN_WORK_DIR/values.yaml"
  fi
  # Last, so the VirtualCluster's parameters win over the plugin's values.
  kosmos_file=$(kosmos_values) || exit
  set -- "$@" --values "$kosmos_file"
  if [ "${CHART_WAIT:-}" = "true" ]; then set -- "$@" --wait; fi
  set -- "$@" --timeout "$(remaining)s"
  say "helm upgrade --install $release (namespace $namespace)"
  bounded helm upgrade --install "$@" -- "$release" "$chart" \
    || finish 5 "helm upgrade --install $release failed"
}

chart_uninstall() {
  release=${CHART_RELEASE:?CHART_RELEASE is not set}
  namespace=${CHART_NAMESPACE:-default}
  say "helm uninstall $release (namespace $namespace)"
  bounded helm uninstall --namespace "$namespace" --ignore-not-found \
    --timeout "$(remaining)s" -- "$release" || finish 5 "helm uninstall $release failed"
}

# Retries SUCCESS_STATE_COMMAND until it exits 0; its exit status is the verdict.
success_wait() {
  [ -n "${SUCCESS_STATE_COMMAND:-}" ] || return 0
  tries=0
  while :; do
    tries=$((tries + 1))
    if bounded sh -c "$SUCCESS_STATE_COMMAND"; then
      say "successStateCommand exited 0 after $tries tries"
      return 0
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      finish 6 "successStateCommand did not exit 0 within ${timeout_seconds}s ($tries tries)"
    fi
    sleep 2
  done
}

# Fails the attempt with a message naming the virtual cluster's API server when it does not
# answer, so an unreachable cluster is not reported as a failed kubectl or helm run. /version is
# readable by every client (system:public-info-viewer), whatever rights the kubeconfig has.
check_reachable() {
  server=$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}' 2> /dev/null) \
    || server="(unreadable kubeconfig)"
  if ! answer=$(bounded kubectl get --raw /version --request-timeout=10s 2>&1); then
    finish 7 "virtual cluster API server $server is unreachable: $(printf '%s' "$answer" | tail -n 1)"
  fi
}

has_chart() {
  [ -n "${CHART_PATH:-}" ] || [ -n "${CHART_NAME:-}" ]
}

case "$action" in
  install)
    fetch CHART
    fetch VALUES
    fetch YAML
    check_reachable
    if has_chart; then chart_install; fi
    if [ -n "${YAML_PATH:-}" ]; then yaml_install; fi
    success_wait
    finish 0 "plugin $plugin installed"
    ;;
  uninstall)
    # The reverse of the install order; a chart needs only its release name to go.
    fetch YAML
    check_reachable
    if [ -n "${YAML_PATH:-}" ]; then yaml_uninstall; fi
    if has_chart; then chart_uninstall; fi
    finish 0 "plugin $plugin uninstalled"
    ;;
  *)
    finish 2 "PLUGIN_ACTION must be install or uninstall, not '$action'"
    ;;
esac
