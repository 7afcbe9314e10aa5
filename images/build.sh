#!/usr/bin/env bash
# `make images`: builds the operator, webhook and executor images as OCI archives, with no
# registry and no container daemon, reproducibly (the same inputs give the same bytes).
#
#   images/out/virtual-cluster-operator.oci.tar   localhost/kosmos/virtual-cluster-operator:<version>
#   images/out/plugin-webhook.oci.tar             localhost/kosmos/plugin-webhook:<version>
#   images/out/plugin-executor.oci.tar            localhost/kosmos/plugin-executor:<version>
#
# <version> is the workspace's crate version (Cargo.toml). Each image is one layer on nothing
# (FROM scratch), user 65532. The operator and webhook are static musl binaries; the executor
# has busybox's sh and tools, the kubectl, helm and kustomize that e2e/build.sh builds (versions
# in e2e/versions.env), curl with the libraries it links, and the CA certificates of this machine.
#
# The archive is written by hand (tar, gzip and sha256sum; the format is the OCI image layout):
# every timestamp is SOURCE_DATE_EPOCH (default: the last commit's time), owners are 0, files
# are sorted, gzip stores no name or time. `images/build.sh --reproducible` builds the archives
# twice from the same binaries and fails unless the bytes are equal.
#
# `images/build.sh --binaries` builds only the two static binaries and prints their folder
# (`make bench` measures those binaries; sharing the build keeps the two from rebuilding each
# other's in one target folder).
#
# Usage: images/build.sh [--reproducible | --binaries]
# Environment: IMAGES_OUT (default images/out), IMAGES_REGISTRY (default localhost/kosmos),
#              SOURCE_DATE_EPOCH, CARGO (default cargo).
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../e2e/lib.sh"

IMAGES_DIR="${REPO_DIR}/images"
OUT="${IMAGES_OUT:-${IMAGES_DIR}/out}"
REGISTRY="${IMAGES_REGISTRY:-localhost/kosmos}"
CARGO="${CARGO:-cargo}"
TARGET=x86_64-unknown-linux-musl
VERSION="$(sed -nE '/^\[workspace.package\]/,/^\[/ s/^version = "(.*)"/\1/p' "${REPO_DIR}/Cargo.toml")"
[[ -n "${VERSION}" ]] || die "no version in [workspace.package] of ${REPO_DIR}/Cargo.toml"
if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
  SOURCE_DATE_EPOCH="$(git -C "${REPO_DIR}" log -1 --format=%ct 2> /dev/null || echo 0)"
fi
export SOURCE_DATE_EPOCH
CREATED="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ)"

# ---------------------------------------------------------------------------------------------
# Binaries

build_binaries() {
  command -v musl-gcc > /dev/null \
    || die "musl-gcc is missing (ring's C code needs it): apt-get install musl-tools"
  rustup target list --installed 2> /dev/null | grep -qx "${TARGET}" \
    || die "the Rust target ${TARGET} is missing: rustup target add ${TARGET}"
  log "building virtual-cluster-operator and plugin-webhook for ${TARGET} (release)"
  # Paths of this checkout and of the cargo home are remapped, so the binaries do not depend on
  # where they were built; the release profile strips symbols. The C compiler gets a fixed
  # SOURCE_DATE_EPOCH, not the archives' (the last commit's time): mimalloc's C code embeds
  # __DATE__ and __TIME__, which GCC takes from it, and the cc crate asks cargo to rebuild ring
  # and mimalloc (and every crate above them) whenever it changes.
  (cd "${REPO_DIR}" && env SOURCE_DATE_EPOCH=0 CC_x86_64_unknown_linux_musl=musl-gcc \
    RUSTFLAGS="--remap-path-prefix=${REPO_DIR}=/src --remap-path-prefix=${CARGO_HOME:-${HOME}/.cargo}=/cargo" \
    "${CARGO}" build --release --locked --target "${TARGET}" \
    -p kosmos-operator -p kosmos-webhook --bin virtual-cluster-operator --bin plugin-webhook >&2)
  local target_dir
  target_dir="$(cd "${REPO_DIR}" && "${CARGO}" metadata --format-version 1 --no-deps \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  RUST_BIN="${target_dir}/${TARGET}/release"
  [[ -x "${RUST_BIN}/virtual-cluster-operator" && -x "${RUST_BIN}/plugin-webhook" ]] \
    || die "the release build left no binaries in ${RUST_BIN}"
}

# ---------------------------------------------------------------------------------------------
# Root filesystems

# /etc/passwd and /etc/group with root and the user 65532 the images run as.
add_users() {
  local root="$1"
  mkdir -p "${root}/etc"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    > "${root}/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "${root}/etc/group"
  mkdir -p "${root}/home/nonroot" "${root}/tmp"
  chmod 1777 "${root}/tmp"
}

rootfs_rust() {
  local root="$1" binary="$2"
  add_users "${root}"
  # Symbols stripped here, not by the release profile, which would rebuild every crate.
  mkdir -p "${root}/usr/local/bin"
  strip --strip-all -o "${root}/usr/local/bin/${binary}" "${RUST_BIN}/${binary}"
  chmod 0755 "${root}/usr/local/bin/${binary}"
}

# The busybox applets the executor script and typical successStateCommands use. Not wget: its
# TLS does not verify certificates; curl does.
EXECUTOR_APPLETS=(sh ash cat cp mv rm ln ls mkdir rmdir chmod touch stat readlink realpath
  sed awk grep egrep fgrep cut tr sort uniq head tail wc tee xargs find diff cmp
  tar gzip gunzip zcat sha256sum md5sum base64 od hexdump
  date sleep timeout printf echo test '[' true false expr seq env id whoami hostname
  dirname basename mktemp which nslookup)

rootfs_executor() {
  local root="$1" applet lib
  add_users "${root}"
  [[ "$(ldd /bin/busybox 2>&1 || true)" == *"not a dynamic"* ]] \
    || die "/bin/busybox is dynamically linked; the image needs busybox-static (apt-get install busybox-static)"
  install -D -m 0755 /bin/busybox "${root}/bin/busybox"
  for applet in "${EXECUTOR_APPLETS[@]}"; do
    ln -s busybox "${root}/bin/${applet}"
  done
  install -D -m 0755 "${KUBECTL}" "${root}/usr/local/bin/kubectl"
  install -D -m 0755 "${HELM}" "${root}/usr/local/bin/helm"
  install -D -m 0755 "${KUSTOMIZE}" "${root}/usr/local/bin/kustomize"
  # curl is dynamically linked: it comes with the exact libraries (and loader) it resolves to.
  install -D -m 0755 /usr/bin/curl "${root}/usr/bin/curl"
  while read -r lib; do
    [[ -n "${lib}" ]] || continue
    install -D -m 0755 "$(readlink -f "${lib}")" "${root}${lib}"
  done < <(ldd /usr/bin/curl | sed -nE 's#.*=> (/[^ ]+) .*#\1#p; s#^\s*(/[^ ]+) .*#\1#p' | sort -u)
  install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "${root}/etc/ssl/certs/ca-certificates.crt"
  printf 'hosts: files dns\n' > "${root}/etc/nsswitch.conf"
}

# ---------------------------------------------------------------------------------------------
# OCI image layout

# A tar whose bytes depend only on the files' contents, names and modes.
reproducible_tar() {
  local dir="$1"
  tar --sort=name --mtime="@${SOURCE_DATE_EPOCH}" --owner=0 --group=0 \
    --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "${dir}" -cf - .
}

sha256() { sha256sum "$1" | cut -d' ' -f1; }

# Stores file $2 (of media type $3) as a blob of layout $1; prints its descriptor JSON.
add_blob() {
  local layout="$1" file="$2" media="$3" digest size
  digest="$(sha256 "${file}")"
  size="$(stat -c %s "${file}")"
  mkdir -p "${layout}/blobs/sha256"
  mv "${file}" "${layout}/blobs/sha256/${digest}"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s}' "${media}" "${digest}" "${size}"
}

# $1 rootfs, $2 image name, $3 config JSON fragment (User, Entrypoint, Cmd, Env), $4 archive.
write_image() {
  local rootfs="$1" name="$2" exec_config="$3" archive="$4"
  local work layout ref
  work="$(mktemp -d)"
  layout="${work}/layout"
  ref="${REGISTRY}/${name}:${VERSION}"
  mkdir -p "${layout}"
  find "${rootfs}" -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
  reproducible_tar "${rootfs}" > "${work}/layer.tar"
  local diff_id
  diff_id="$(sha256 "${work}/layer.tar")"
  gzip -n < "${work}/layer.tar" > "${work}/layer.tar.gz"
  rm -f "${work}/layer.tar"
  local layer
  layer="$(add_blob "${layout}" "${work}/layer.tar.gz" application/vnd.oci.image.layer.v1.tar+gzip)"
  local labels
  labels="$(printf '"org.opencontainers.image.title":"%s","org.opencontainers.image.version":"%s","org.opencontainers.image.created":"%s","org.opencontainers.image.licenses":"Apache-2.0"' \
    "${name}" "${VERSION}" "${CREATED}")"
  printf '{"created":"%s","architecture":"amd64","os":"linux","config":{%s,"Labels":{%s}},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"images/build.sh"}]}' \
    "${CREATED}" "${exec_config}" "${labels}" "${diff_id}" "${CREATED}" > "${work}/config.json"
  local config
  config="$(add_blob "${layout}" "${work}/config.json" application/vnd.oci.image.config.v1+json)"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "${config}" "${layer}" > "${work}/manifest.json"
  local manifest
  manifest="$(add_blob "${layout}" "${work}/manifest.json" application/vnd.oci.image.manifest.v1+json)"
  # containerd (ctr import, kind load) names the image after io.containerd.image.name; other
  # tools read the tag from org.opencontainers.image.ref.name.
  # The manifest's descriptor without its closing brace, to add the annotations.
  local descriptor="${manifest:0:${#manifest}-1}"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "${descriptor}" "${ref}" "${VERSION}" \
    > "${layout}/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "${layout}/oci-layout"
  find "${layout}" -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +
  chmod -R u=rwX,go=rX "${layout}"
  reproducible_tar "${layout}" > "${archive}.tmp"
  mv -f "${archive}.tmp" "${archive}"
  rm -rf "${work}"
}

# Builds the three archives into folder $1.
build_all() {
  local out="$1" work
  mkdir -p "${out}"
  work="$(mktemp -d)"
  # The umask decides the modes of the folders we make; fix it for reproducible modes.
  umask 022
  local user='"User":"65532:65532"'
  local path='"Env":["PATH=/usr/local/bin:/usr/bin:/bin"]'
  rootfs_rust "${work}/operator" virtual-cluster-operator
  write_image "${work}/operator" virtual-cluster-operator \
    "${user},${path},\"Entrypoint\":[\"/usr/local/bin/virtual-cluster-operator\"]" \
    "${out}/virtual-cluster-operator.oci.tar"
  rootfs_rust "${work}/webhook" plugin-webhook
  write_image "${work}/webhook" plugin-webhook \
    "${user},${path},\"Entrypoint\":[\"/usr/local/bin/plugin-webhook\"],\"Cmd\":[\"serve\"]" \
    "${out}/plugin-webhook.oci.tar"
  rootfs_executor "${work}/executor"
  write_image "${work}/executor" plugin-executor \
    "${user},${path},\"Cmd\":[\"/bin/sh\"],\"WorkingDir\":\"/tmp\"" \
    "${out}/plugin-executor.oci.tar"
  rm -rf "${work}"
}

mode="${1:-build}"
case "${mode}" in
  build | --reproducible) ;;
  --binaries)
    build_binaries
    echo "${RUST_BIN}"
    exit 0
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

"${E2E_DIR}/build.sh" >&2
build_binaries
build_all "${OUT}"
for f in "${OUT}"/*.oci.tar; do
  printf '%-40s %6s MiB  sha256:%s\n' "$(basename "${f}")" \
    "$(($(stat -c %s "${f}") / 1048576))" "$(sha256 "${f}")"
done
if [[ "${mode}" == --reproducible ]]; then
  again="$(mktemp -d)"
  trap 'rm -rf "${again}"' EXIT
  build_all "${again}"
  for f in "${OUT}"/*.oci.tar; do
    cmp -s "${f}" "${again}/$(basename "${f}")" \
      || die "$(basename "${f}") differs between two builds from the same inputs"
  done
  log "reproducible: a second build gave the same bytes"
fi
