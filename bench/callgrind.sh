#!/usr/bin/env bash
# Instructions per review, counted by callgrind (they repeat to the last digit, where wall-clock
# figures on this shared machine swing 2x): the webhook's own work on one review
# (`kosmos-bench reviews`: parse, lookups, the signed mutation, the answer's bytes) and the
# ceiling's whole cost of one request (TLS, HTTP/1.1, reading the review, writing the webhook's
# answer), each as the difference of two runs of different lengths, so start-up and the TLS
# handshake drop out. The webhook's instructions per review beyond the ceiling's are what keeps
# its throughput below the ceiling's.
#
# Usage: bench/callgrind.sh [pvpath|uri]   (release builds of kosmos-bench and plugin-webhook;
# valgrind and curl). Writes the callgrind files and annotations into target/bench/callgrind/.
set -euo pipefail
cd "$(dirname "$0")/.."

review="${1:-pvpath}"
target="${CARGO_TARGET_DIR:-target}"
bin="${target}/release"
out="target/bench/callgrind"
mkdir -p "${out}"
for tool in valgrind callgrind_annotate curl; do
  command -v "${tool}" > /dev/null || { echo "${tool} is missing: apt-get install valgrind curl" >&2; exit 1; }
done
[[ -x "${bin}/kosmos-bench" ]] || { echo "${bin}/kosmos-bench is missing: cargo build --release -p kosmos-bench" >&2; exit 1; }

total() { # instructions of a callgrind file
  awk '/^summary:/ {print $2}' "$1"
}

# The webhook's path, in-process.
short=200 long=1200
for n in "${short}" "${long}"; do
  valgrind --tool=callgrind --callgrind-out-file="${out}/reviews-${review}-${n}.out" \
    "${bin}/kosmos-bench" reviews --review "${review}" --count "${n}" \
    --answer "${out}/answer-${review}.json" 2> "${out}/reviews-${n}.log"
done
webhook=$(( ($(total "${out}/reviews-${review}-${long}.out") - $(total "${out}/reviews-${review}-${short}.out")) / (long - short) ))
callgrind_annotate --inclusive=yes "${out}/reviews-${review}-${long}.out" > "${out}/reviews-${review}.txt" 2> /dev/null || true

# The ceiling, answering the webhook's answer, driven by curl over one kept-alive connection.
certs="${out}/certs"
"${bin}/plugin-webhook" certs --out "${certs}" --extra-names 127.0.0.1 > /dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
request() { # n: POSTs over one connection
  local config="${out}/curl-$1.cfg"
  : > "${config}"
  for _ in $(seq "$1"); do
    printf 'url = "https://127.0.0.1:%s/mutate"\noutput = "/dev/null"\n' "${port}" >> "${config}"
  done
  curl -sS -k --http1.1 --fail -H 'content-type: application/json' \
    --data-binary "@${out}/review-${review}.json" -K "${config}"
}
# The review the webhook answered above, as bytes.
"${bin}/kosmos-bench" reviews --review "${review}" --count 1 --write-review "${out}/review-${review}.json" 2> /dev/null
counts=()
for n in "${short}" "${long}"; do
  valgrind --tool=callgrind --callgrind-out-file="${out}/ceiling-${review}-${n}.out" \
    "${bin}/kosmos-bench" ceiling --listen "127.0.0.1:${port}" --tls-cert "${certs}/tls.crt" \
    --tls-key "${certs}/tls.key" --body "${review}=${out}/answer-${review}.json" \
    2> "${out}/ceiling-${n}.log" &
  pid=$!
  for _ in $(seq 100); do
    curl -sk -o /dev/null "https://127.0.0.1:${port}/" && break
    sleep 0.2
  done
  request "${n}"
  # TERM: a background job ignores INT. Callgrind writes its file as the server dies.
  kill -TERM "${pid}"
  wait "${pid}" || true
  counts+=("$(total "${out}/ceiling-${review}-${n}.out")")
done
ceiling=$(( (counts[1] - counts[0]) / (long - short) ))
callgrind_annotate --inclusive=yes "${out}/ceiling-${review}-${long}.out" > "${out}/ceiling-${review}.txt" 2> /dev/null || true

echo "review ${review}: webhook's own work ${webhook} instructions per review; ceiling ${ceiling} per request (TLS + HTTP/1.1 + the $(stat -c %s "${out}/answer-${review}.json")-byte answer)"
echo "valgrind hides SHA-NI, so the webhook's HMAC is counted on ring's AVX path (~30x its native instructions); the kernel's share of a request (loopback TCP) is not counted"
