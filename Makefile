# titus-agent — see README.md. Every target installs what it needs via `make deps`.
SHELL := /bin/bash
GO ?= go
BIN := bin
DEPS_STAMP := $(HOME)/.cache/titus-agent/deps.stamp
export PATH := $(HOME)/.cache/titus-agent/bin:$(PATH)

.PHONY: all build test check-generate test-unit test-integration test-chaos chaos test-vm test-gpu bench deps generate demo demo-stop clean

all: build

# VERSION comes from packaging/Makefile.inc (git describe, or 0.0.0~git<commit>).
COMMIT = $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS = -X github.com/titus-agent/titus-agent/pkg/agent.Version=$(VERSION) -X github.com/titus-agent/titus-agent/pkg/agent.Commit=$(COMMIT)

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

deps:
	bash scripts/deps.sh

generate: deps
	$(GO) build -o $(BIN)/tools/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	protoc -I api --plugin=protoc-gen-go=$(BIN)/tools/protoc-gen-go --plugin=protoc-gen-go-grpc=$(BIN)/tools/protoc-gen-go-grpc \
	  --go_out=paths=source_relative:api --go-grpc_out=paths=source_relative:api \
	  $$(find api -name '*.proto' | sort)

# The host lane (unit, integration, the chaos soak: one after another, they
# share runc's state and host links) and the production-kernel lane (its own
# guest, nothing shared) run side by side: the integration suite mostly waits
# on containers, and the guest's emulated CPU uses what it leaves idle. The
# host lane prints as it goes; the guest's output ($(VM_OUT)) follows it.
VM_OUT ?= /tmp/titus-test-vm.out
test: deps check-generate build
	@echo "test: the production-kernel lane runs beside the host lane; its output ($(VM_OUT)) follows"
	@bash test/vm/run.sh > $(VM_OUT) 2>&1 & vm=$$!; \
	  $(MAKE) --no-print-directory test-unit test-integration test-chaos; host=$$?; \
	  wait $$vm; vmrc=$$?; \
	  echo "=== production-kernel lane (make test-vm): exit $$vmrc"; cat $(VM_OUT); \
	  if [ $$host -ne 0 ]; then echo "test: the host lane FAILED"; fi; \
	  if [ $$vmrc -ne 0 ]; then echo "test: the production-kernel lane FAILED"; fi; \
	  [ $$host -eq 0 ] && [ $$vmrc -eq 0 ]

# The committed protobuf code is what `make generate` makes from api/.
check-generate: generate
	@git diff --exit-code --stat -- api/ || { echo "api/: generated code differs from the committed code (commit the output of make generate)"; exit 1; }

test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./api/... ./pkg/... ./cmd/... ./docs/...

# Integration tests need root, containerd, a registry, moto and the IMDS mock;
# they fail (never skip) when something is missing. The full log is kept in
# $(INTEGRATION_LOG); the console shows each test, failures with detail, and the count.
# The suite holds /tmp/titus-integ.lock (runc state, host links), as the soak does.
INTEGRATION_LOG ?= /tmp/titus-integration.log
test-integration: deps build
	@set -o pipefail; $(GO) test -c -o $(BIN)/integration.test ./test/integration/ && \
	  cd test/integration && flock /tmp/titus-integ.lock $(CURDIR)/$(BIN)/integration.test -test.count=1 -test.timeout 60m -test.v > $(INTEGRATION_LOG) 2>&1; rc=$$?; \
	  grep -E '^(--- |    |PASS|FAIL|ok|panic|INTEGRATION)' $(INTEGRATION_LOG) | grep -v '^        time=' ; \
	  if [ $$rc -ne 0 ]; then echo "integration tests FAILED (full log: $(INTEGRATION_LOG))"; fi; exit $$rc

# The soak under faults (test/chaos, docs/slo.md "Under faults"): a fleet of
# three schedulers over three etcd members and agents on simulated EC2 hosts,
# kept busy while faults from a seeded schedule hit it; it prints the SLO
# report and fails if an objective is missed. `test-chaos` is the short form
# `make test` runs (a few minutes); `chaos` the long one. Both run the
# package's other tests first (the report's arithmetic, the schedule, the
# partition as a real link down) and hold
# /tmp/titus-integ.lock (runc state, host links) for the whole run. Replay a
# run with CHAOS_FLAGS=-chaos.seed=N; see `go test ./test/chaos -args -h`.
CHAOS_LOG ?= /tmp/titus-chaos.log
CHAOS_FLAGS ?=
CHAOS_LONG ?= -chaos.baseline=60s -chaos.duration=10m -chaos.hosts=3 -chaos.azs=us-east-1a,us-east-1b,us-east-1c -chaos.rate=20 -chaos.fault-every=20s
CHAOS_RUN = $(GO) test -c -o $(BIN)/chaos.test ./test/chaos/ && \
	  set -o pipefail; flock /tmp/titus-integ.lock $(BIN)/chaos.test -test.v -test.count=1
CHAOS_SHOW = tee $(CHAOS_LOG) | grep -E '^(CHAOS|===|---|  |jobs|tasks|launch|failed|ended|metadata|API|leaks|faults|objectives|OBJECTIVE|FAIL|PASS|panic)'
test-chaos: deps build
	@$(CHAOS_RUN) -test.timeout 8m $(CHAOS_FLAGS) 2>&1 | $(CHAOS_SHOW) || { echo "chaos soak FAILED (full log: $(CHAOS_LOG))"; exit 1; }
chaos: deps build
	@$(CHAOS_RUN) -test.timeout 30m $(CHAOS_LONG) $(CHAOS_FLAGS) 2>&1 | $(CHAOS_SHOW) || { echo "chaos soak FAILED (full log: $(CHAOS_LOG))"; exit 1; }

# The production-kernel lane: a Debian 12 guest (cloud kernel, cgroup v2,
# systemd, XFS prjquota) under qemu runs a subset of test/integration and
# says how many ran. Part of `make test`; it fails (never skips) when qemu,
# the image build or the guest fails. The guest image is cached in
# ~/.cache/titus-agent/vm/ and rebuilt only when its recipe changes. See
# test/vm/run.sh and docs/operations.md.
test-vm: deps build
	bash test/vm/run.sh

# The GPU tests on a host with NVIDIA GPUs and their driver: the agent and the
# tests use the real devices under TITUS_TEST_GPU_DEV_ROOT (default /dev)
# instead of stand-in nodes. Needs at least one GPU; two or more also run the
# cross-task attacks. See docs/gpus.md.
TITUS_TEST_GPU_DEV_ROOT ?= /dev
test-gpu: deps build
	TITUS_TEST_GPU_DEV_ROOT=$(TITUS_TEST_GPU_DEV_ROOT) $(GO) test -count=1 -v -timeout 20m -run 'TestGPUs' ./test/integration/

bench: deps build
	$(GO) run ./test/bench

demo: deps build
	bash scripts/demo.sh

demo-stop:
	bash scripts/demo.sh stop

include packaging/Makefile.inc

clean:
	rm -rf $(BIN)
