#!/usr/bin/env bash
# Passes `cargo test` output (stdin) through unchanged and fails if any test was ignored, naming
# each: `make test` on the project's machine runs every test, so an ignored test is one that did
# not run there, and that must not look like a pass. A test that cannot run in some environment
# is #[ignore]d with its reason; where it cannot run here, fix the environment (or .ci/run).
#
# Usage: cargo test ... 2>&1 | e2e/no-ignored.sh
set -euo pipefail

ignored=()
binary=""
seen=0 # ignored tests named so far for the current binary
while IFS= read -r line; do
  printf '%s\n' "${line}"
  # cargo's header of each test binary: indented "Running <target>" or "Doc-tests <crate>".
  if [[ "${line}" =~ ^\ +(Running|Doc-tests)\  ]]; then
    binary="${line#"${line%%[! ]*}"}"
    seen=0
    continue
  fi
  case "${line}" in
    "test "*" ... ignored"*)
      ignored+=("${binary}: ${line}")
      seen=$((seen + 1))
      ;;
    "test result: "*)
      count="${line#*failed; }"
      count="${count%% ignored*}"
      # Ignored tests the summary counts but no line named (another output format).
      if [[ "${count}" =~ ^[0-9]+$ ]] && ((count > seen)); then
        ignored+=("${binary}: $((count - seen)) ignored")
      fi
      ;;
  esac
done

if ((${#ignored[@]})); then
  printf '%s: error: tests were ignored; every test must run here:\n' "$(basename "$0")" >&2
  printf '  %s\n' "${ignored[@]}" >&2
  exit 1
fi
