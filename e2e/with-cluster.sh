#!/usr/bin/env bash
# Runs a command against the local control planes: starts them if they are not running, exports
# KUBECONFIG (host), KOSMOS_E2E_VIRTUAL_KUBECONFIG (virtual) and PATH (kubectl, helm, ...), runs
# the command, and afterwards stops the control planes only if this run started them and no other
# with-cluster.sh still uses them. The exit status is the command's.
#
# Usage: e2e/with-cluster.sh COMMAND [ARG...]      e.g. e2e/with-cluster.sh cargo test --workspace
set -euo pipefail
# shellcheck source=e2e/lib.sh
. "$(dirname "$0")/lib.sh"

[[ $# -gt 0 ]] || die "usage: $0 COMMAND [ARG...]"

# shellcheck disable=SC2317 # called by the EXIT trap
release() {
  "${E2E_DIR}/cluster.sh" release "$$" || log "could not release the cluster; run e2e/cluster.sh down"
}
# Set before acquire: a start that fails half-way must still stop what it started.
trap release EXIT
# Bash runs the EXIT trap on these only if they are trapped.
trap 'exit 130' INT
trap 'exit 143' TERM

"${E2E_DIR}/cluster.sh" acquire "$$"
eval "$("${E2E_DIR}/cluster.sh" env)"

status=0
"$@" || status=$?
exit "${status}"
