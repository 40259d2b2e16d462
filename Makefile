# weft — `make help` lists the targets. Every target works; nothing here is a placeholder.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# Build caches live outside the repo, so a fresh clone on the same machine reuses them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/weft/target
export WEFT_E2E_CACHE ?= $(HOME)/.cache/weft-e2e
CARGO ?= cargo
WEFT := $(CARGO_TARGET_DIR)/debug/weft

.PHONY: help
help: ## List the targets with a line on each
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-22s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: tools
tools: ## Install the Rust components the checks need (rustfmt, clippy); idempotent
	@bash e2e/scripts/install-rust-tools.sh

.PHONY: build
build: ## Build weft and weft-proxy (release)
	$(CARGO) build --release --bins

.PHONY: generate
generate: ## Regenerate committed files (crds/) from the code
	$(CARGO) run --quiet --bin weft -- crds --out-dir crds

.PHONY: crds
crds: generate ## Alias of generate: write crds/ from the Rust API types

.PHONY: lint
lint: tools ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

.PHONY: check-proxy-kube-free
check-proxy-kube-free: ## Prove weft-proxy builds without kube (the data plane is kube-free)
	@if $(CARGO) tree --locked -e normal --no-default-features --features proxy -i kube >/dev/null 2>&1; then \
	  echo "weft-proxy depends on kube:"; $(CARGO) tree -e normal --no-default-features --features proxy -i kube; exit 1; fi
	$(CARGO) build --locked --no-default-features --features proxy --bin weft-proxy
	@echo "ok: weft-proxy builds with the proxy feature alone and links no kube"

.PHONY: unit
unit: ## Unit, golden and schema tests (no cluster)
	$(CARGO) test --locked -p weft
	$(CARGO) test --locked -p weft-node-agent --bins

.PHONY: cluster-components
cluster-components: ## Build the local cluster's Kubernetes, etcd and CoreDNS binaries (cached)
	@bash e2e/components/build.sh >/dev/null

.PHONY: cluster-up
cluster-up: ## Start the local cluster (real Kubernetes 1.37 + the node agent); needs root
	@bash e2e/cluster/up.sh

.PHONY: cluster-down
cluster-down: ## Stop the local cluster and remove everything it made (safe to run twice)
	@bash e2e/cluster/down.sh

.PHONY: deploy
deploy: ## Build weft and install it into the local cluster with kubectl apply -k config/default
	$(CARGO) build --locked -p weft --bins
	@bash e2e/scripts/deploy.sh

.PHONY: e2e
e2e: ## End-to-end tests on the local cluster (brings it up, always tears it down); needs root
	$(CARGO) build --locked -p weft --bins
	@trap 'bash e2e/cluster/down.sh' EXIT; $(CARGO) test --locked -p weft-node-agent --test cluster --test mesh_ca --test injection --test revisions --test cli -- --test-threads=4

.PHONY: test
test: lint check-proxy-kube-free unit e2e ## The whole suite: lint, kube-free check, unit and golden tests, cluster tests
