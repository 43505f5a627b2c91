# titus-agent — see README.md. Every target installs what it needs via `make deps`.
SHELL := /bin/bash
GO ?= go
BIN := bin
DEPS_STAMP := $(HOME)/.cache/titus-agent/deps.stamp
export PATH := $(HOME)/.cache/titus-agent/bin:$(PATH)

.PHONY: all build test test-unit test-integration bench deps generate demo demo-stop clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	bash scripts/deps.sh

generate:
	$(GO) build -o $(BIN)/tools/ google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	protoc -I api --plugin=protoc-gen-go=$(BIN)/tools/protoc-gen-go --plugin=protoc-gen-go-grpc=$(BIN)/tools/protoc-gen-go-grpc \
	  --go_out=paths=source_relative:api --go-grpc_out=paths=source_relative:api \
	  $$(find api -name '*.proto' | sort)

test: deps test-unit test-integration

test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./api/... ./pkg/... ./cmd/...

test-integration: deps build
	$(GO) test -count=1 -timeout 40m -v ./test/integration/... 2>&1 | tee /tmp/titus-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic|\s+\S+_test.go)' ; \
	  rc=$${PIPESTATUS[0]}; grep -E '^INTEGRATION' /tmp/titus-integration.log; exit $$rc

bench: deps build
	$(GO) run ./test/bench

demo: deps build
	bash scripts/demo.sh

demo-stop:
	bash scripts/demo.sh stop

clean:
	rm -rf $(BIN)
