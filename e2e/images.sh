#!/usr/bin/env bash
# Builds the container images of the local node from files on this machine, with no registry and
# no image builder daemon: each is an OCI image archive (one uncompressed layer) written by this
# script, which `e2e/cluster.sh` imports into the node's containerd (`ctr images import`).
#
#   localhost/kosmos-e2e/pause:1          the pod sandbox: our own 20-line Go program (images/pause)
#   localhost/kosmos-e2e/busybox:1        Debian's busybox-static with every applet linked
#   localhost/kosmos/plugin-executor:<v>  busybox plus the cached kubectl, helm and kustomize: the
#                                         executor image until `make images` ships the real one
#   localhost/kosmos-e2e/local-path-provisioner:<version>
#                                         rancher's local-path-provisioner, built from its Go module
#                                         by e2e/build.sh, on the busybox files
#   localhost/kosmos-e2e/cert-manager-controller:<version>
#   localhost/kosmos-e2e/cert-manager-cainjector:<version>
#                                         cert-manager's controller and CA injector (our mains
#                                         over its module, e2e/cert-manager), alone, user 65532
#
# Usage: e2e/images.sh            build what is missing or out of date; print nothing on stdout
#        e2e/images.sh --list     print one line per image: NAME ARCHIVE
#
# Archives live in ~/.cache/kosmos-plugin-e2e/images/ (KOSMOS_E2E_CACHE), each rebuilt only when
# what goes into it changed (a hash of the inputs is kept next to it). Needs busybox-static.
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

IMAGE_DIR="${E2E_CACHE}/images"
BUSYBOX="${KOSMOS_E2E_BUSYBOX:-/bin/busybox}"
ARCH="$(go env GOARCH 2> /dev/null || uname -m | sed 's/x86_64/amd64/; s/aarch64/arm64/')"

# name|reference|archive file
images() {
  printf '%s\n' \
    "pause|${PAUSE_IMAGE}|${IMAGE_DIR}/pause.tar" \
    "busybox|${BUSYBOX_IMAGE}|${IMAGE_DIR}/busybox.tar" \
    "executor|${EXECUTOR_IMAGE}|${IMAGE_DIR}/executor.tar" \
    "local-path-provisioner|${LOCAL_PATH_PROVISIONER_IMAGE}|${IMAGE_DIR}/local-path-provisioner.tar" \
    "cert-manager-controller|${CERT_MANAGER_CONTROLLER_IMAGE}|${IMAGE_DIR}/cert-manager-controller.tar" \
    "cert-manager-cainjector|${CERT_MANAGER_CAINJECTOR_IMAGE}|${IMAGE_DIR}/cert-manager-cainjector.tar"
}

if [[ "${1:-}" == "--list" ]]; then
  images | awk -F'|' '{print $2, $3}'
  exit 0
fi

sha256_of() {
  sha256sum "$1" | cut -d' ' -f1
}

# Writes blob file $1 into the layout $2 under its digest; prints "<digest> <size>".
add_blob() {
  local file="$1" layout="$2" digest size
  digest="$(sha256_of "${file}")"
  size="$(stat -c %s "${file}")"
  mkdir -p "${layout}/blobs/sha256"
  mv -f "${file}" "${layout}/blobs/sha256/${digest}"
  echo "${digest} ${size}"
}

# Packs root filesystem folder $1 as image $2 into OCI archive $3. $4 is the image config's
# "config" object (JSON: Entrypoint, Cmd, Env, User...). The layer's tar is reproducible (sorted,
# fixed times and owners), so the same files give the same image ID.
pack() {
  local rootfs="$1" ref="$2" out="$3" config_json="$4"
  local work
  work="$(mktemp -d "${IMAGE_DIR}/.pack.XXXXXX")"
  local layout="${work}/layout"
  mkdir -p "${layout}"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${rootfs}" -cf "${work}/layer.tar" .
  local layer_digest layer_size
  read -r layer_digest layer_size < <(add_blob "${work}/layer.tar" "${layout}")
  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"e2e/images.sh"}]}' \
    "${ARCH}" "${config_json}" "${layer_digest}" > "${work}/config.json"
  local config_digest config_size
  read -r config_digest config_size < <(add_blob "${work}/config.json" "${layout}")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "${config_digest}" "${config_size}" "${layer_digest}" "${layer_size}" > "${work}/manifest.json"
  local manifest_digest manifest_size
  read -r manifest_digest manifest_size < <(add_blob "${work}/manifest.json" "${layout}")
  # containerd names the imported image after io.containerd.image.name; other tools read the
  # standard ref.name annotation, which holds the full reference too.
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${manifest_digest}" "${manifest_size}" "${ref}" "${ref}" > "${layout}/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "${layout}/oci-layout"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "${layout}" -cf "${work}/image.tar" .
  mv -f "${work}/image.tar" "${out}"
  rm -rf "${work}"
}

# A minimal root filesystem with busybox in folder $1: every applet as a link in /bin, the
# folders programs expect, and users root and nobody.
busybox_rootfs() {
  local root="$1" applet
  mkdir -p "${root}"/{bin,etc,tmp,root,home,var/tmp,usr/local/bin,dev,proc,sys}
  chmod 1777 "${root}/tmp" "${root}/var/tmp"
  cp "${BUSYBOX}" "${root}/bin/busybox"
  while read -r applet; do
    [[ "${applet}" == busybox ]] && continue
    ln -sf busybox "${root}/bin/${applet}"
  done < <("${BUSYBOX}" --list)
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n' > "${root}/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' > "${root}/etc/group"
}

PATH_ENV='"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]'

build_pause() {
  local root="$1"
  mkdir -p "${root}"
  (cd "${E2E_DIR}/images/pause" && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "${root}/pause" .)
  echo "{\"Entrypoint\":[\"/pause\"],\"User\":\"65535:65535\",${PATH_ENV}}"
}

build_busybox() {
  busybox_rootfs "$1"
  echo "{\"Cmd\":[\"sh\"],${PATH_ENV}}"
}

build_executor() {
  local root="$1"
  busybox_rootfs "${root}"
  cp "${KUBECTL}" "${HELM}" "${KUSTOMIZE}" "${root}/usr/local/bin/"
  # The same user as the real executor image (images/build.sh), so tests see one behaviour.
  echo "{\"Cmd\":[\"sh\"],\"User\":\"65532:65532\",${PATH_ENV}}"
}

build_local_path_provisioner() {
  local root="$1"
  busybox_rootfs "${root}"
  cp "${LOCAL_PATH_PROVISIONER}" "${root}/usr/local/bin/local-path-provisioner"
  echo "{\"Entrypoint\":[\"/usr/local/bin/local-path-provisioner\"],${PATH_ENV}}"
}

# A static Go program $2 alone in root filesystem $1, run as user 65532 (no shell: it talks only
# to the apiserver, with its ServiceAccount's token and CA).
static_rootfs() {
  local root="$1" bin="$2"
  mkdir -p "${root}/usr/local/bin" "${root}/etc" "${root}/tmp"
  chmod 1777 "${root}/tmp"
  cp "${bin}" "${root}/usr/local/bin/"
  printf 'nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n' > "${root}/etc/passwd"
  printf 'nonroot:x:65532:\n' > "${root}/etc/group"
  echo "{\"Entrypoint\":[\"/usr/local/bin/$(basename "${bin}")\"],\"User\":\"65532:65532\",${PATH_ENV}}"
}

build_cert_manager_controller() {
  static_rootfs "$1" "${CERT_MANAGER_CONTROLLER}"
}

build_cert_manager_cainjector() {
  static_rootfs "$1" "${CERT_MANAGER_CAINJECTOR}"
}

# What goes into image $1: a hash over its recipe (this script) and the files it copies, so that
# an archive is rebuilt exactly when one of them changed.
inputs_of() {
  local files=("$0" "${BUSYBOX}")
  case "$1" in
    pause) files=("$0" "${E2E_DIR}/images/pause/main.go" "${E2E_DIR}/images/pause/go.mod") ;;
    executor) files+=("${KUBECTL}" "${HELM}" "${KUSTOMIZE}") ;;
    local-path-provisioner) files+=("${LOCAL_PATH_PROVISIONER}") ;;
    cert-manager-controller) files=("$0" "${CERT_MANAGER_CONTROLLER}") ;;
    cert-manager-cainjector) files=("$0" "${CERT_MANAGER_CAINJECTOR}") ;;
  esac
  echo "$1 ${ARCH}" | cat - "${files[@]}" | sha256sum | cut -d' ' -f1
}

[[ -x "${BUSYBOX}" ]] || die "no busybox at ${BUSYBOX}: apt-get install busybox-static (.ci/run does)"
mkdir -p "${IMAGE_DIR}"
exec 7> "${IMAGE_DIR}/.lock"
flock -w 600 7 || die "waited 10 minutes for ${IMAGE_DIR}/.lock"

while IFS='|' read -r name ref archive; do
  want="$(inputs_of "${name}")"
  if [[ -f "${archive}" && "$(cat "${archive}.inputs" 2> /dev/null)" == "${want}" ]]; then
    continue
  fi
  log "image ${ref}: building ${archive}"
  rootfs="$(mktemp -d "${IMAGE_DIR}/.rootfs.XXXXXX")"
  config="$("build_${name//-/_}" "${rootfs}")"
  pack "${rootfs}" "${ref}" "${archive}" "${config}"
  rm -rf "${rootfs}"
  echo "${want}" > "${archive}.inputs"
done < <(images)
