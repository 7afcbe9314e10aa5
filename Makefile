# Every entry point of the project. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help build test load-tool drills unit lint fmt crds crds-check chart-docs chart-docs-check images images-check e2e-bins cluster-up cluster-down demo bench bench-quick certs

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

build: ## build every crate
	$(CARGO) build --workspace --all-targets

test: lint crds-check chart-docs-check e2e-bins images-check load-tool ## every test: lint, CRD drift, unit tests and e2e against real control planes
	set -o pipefail; export BENCH_OHA="$$(bench/tools.sh oha | sed -n 's/^BENCH_OHA=//p')"; \
	  e2e/with-cluster.sh $(CARGO) test --workspace 2>&1 | e2e/no-ignored.sh

load-tool: ## build the load generator oha once (cached; the certificate drills and make bench use it)
	bench/tools.sh oha > /dev/null

drills: e2e-bins load-tool ## fault drills at full size and 10 minutes of each fuzz target (about 40 min); prints a table
	CARGO=$(CARGO) e2e/drills.sh

unit: ## the tests that need no control plane (fast)
	$(CARGO) test --workspace --lib --bins
	$(CARGO) test -p kosmos-api

lint: ## rustfmt check, clippy with warnings as errors, shellcheck of every script
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v shellcheck > /dev/null || { echo "shellcheck is missing: apt-get install shellcheck (.ci/run installs it)" >&2; exit 1; }
	shellcheck -x e2e/*.sh images/*.sh bench/*.sh .ci/run .ci/missing-packages
	shellcheck -s sh crates/webhook/src/executor.sh

fmt: ## format the code
	$(CARGO) fmt --all

crds: ## write the CRD YAML into charts/kosmos-plugins/files/crds from the Rust types
	$(CARGO) run -q -p kosmos-api --features crdgen --bin crdgen

crds-check: ## fail if the committed CRD YAML differs from the Rust types
	$(CARGO) run -q -p kosmos-api --features crdgen --bin crdgen -- --check

chart-docs: ## write the values table of charts/kosmos-plugins/README.md from values.yaml
	$(CARGO) run -q -p kosmos-e2e --bin chart-docs

chart-docs-check: ## fail if the chart README's values table differs from values.yaml
	$(CARGO) run -q -p kosmos-e2e --bin chart-docs -- --check

images: e2e-bins ## the operator, webhook and executor images as OCI archives in images/out (no registry, no daemon)
	images/build.sh

images-check: e2e-bins ## make images, then build the archives again and fail unless the bytes are equal
	images/build.sh --reproducible

e2e-bins: ## build (once, cached) the Kubernetes binaries, etcd, helm, kustomize, local-path-provisioner, cert-manager, the node's images
	e2e/build.sh
	e2e/images.sh

cluster-up: e2e-bins ## start the local cluster: host control plane with a real node, virtual control plane (idempotent)
	e2e/cluster.sh up

cluster-down: ## stop the local cluster; remove its processes, mounts, network namespace, containers and state
	e2e/cluster.sh down

demo: e2e-bins ## the main job: the images, the local cluster, the chart installed on its node, the design's examples to Completed
	e2e/demo.sh

bench: ## webhook and operator against their ceiling and peer, side by side (target/bench/report.md)
	bench/run.sh

bench-quick: ## a small run of every benchmark (a few minutes)
	bench/run.sh --quick

certs: ## development certificates for the webhook in certs/ (ca.crt, tls.crt, tls.key)
	$(CARGO) run -q -p kosmos-webhook --bin plugin-webhook -- certs --out certs
