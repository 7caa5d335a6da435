# The one test command is `make test` (what .ci/run runs). See docs/testing.md.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build

CARGO ?= cargo
CRD_FILE := crds/ingestionkeyrequests.keysync.dev.yaml
# kube-apiserver, etcd and kube-controller-manager: $KUBEBUILDER_ASSETS when it is usable,
# otherwise built once by hack/envtest-assets.sh and cached outside the repository.
ASSETS_SCRIPT := hack/envtest-assets.sh

.PHONY: build assets test fmt fmt-check lint unit-and-integration crd-check crds

build:
	$(CARGO) build --all-targets

## Prints the directory of the control-plane binaries, building and caching them if needed.
assets:
	@$(ASSETS_SCRIPT)

## Everything: formatting, clippy, the CRD drift check, unit, integration and doc tests.
test: fmt-check lint crd-check unit-and-integration

fmt:
	$(CARGO) fmt

fmt-check:
	$(CARGO) fmt --check

lint:
	$(CARGO) clippy --all-targets -- -D warnings

unit-and-integration:
	assets=$$($(ASSETS_SCRIPT)); \
	export KUBEBUILDER_ASSETS=$$assets; \
	echo "control-plane binaries: $$KUBEBUILDER_ASSETS" >&2; \
	$(CARGO) test

## The committed CRD must be what the binary generates.
crd-check:
	$(CARGO) run -q -- crd | diff -u $(CRD_FILE) - \
	  || { echo "$(CRD_FILE) is stale: run 'make crds'" >&2; exit 1; }

## Regenerates crds/ from the binary.
crds:
	$(CARGO) run -q -- crd > $(CRD_FILE).tmp && mv $(CRD_FILE).tmp $(CRD_FILE)
