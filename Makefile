# cloche: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

VERSION ?= 0.1.0-dev
BIN := bin
# Both binaries are static and reproducible: the guest agent is part of the measured guest
# image, so the same source must give the same bytes.
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -buildid= -X main.version=$(VERSION)"

.PHONY: all build deps demo test vet fuzz bench clean

all: build

build: $(BIN)/cloche $(BIN)/cloche-guest

$(BIN)/cloche: FORCE
	$(GOBUILD) -o $@ ./cmd/cloche

$(BIN)/cloche-guest: FORCE
	$(GOBUILD) -o $@ ./cmd/cloche-guest

FORCE:

# Installs what is missing: QEMU 10 and the cloud kernel from bookworm-backports (the suite
# is derived from this machine's own apt source), e2fsprogs, veritysetup, mmdebstrap, ...
deps:
	bash scripts/install-deps.sh

# Builds everything, runs examples/hello-c in the (simulated) confidential VM, verifies it.
demo: deps build
	bash scripts/demo.sh

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The whole test suite, real QEMU boots included.
test: deps build vet
	$(GO) test -timeout 75m ./...

# A short run of every fuzz target.
FUZZTIME ?= 10s
fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

clean:
	rm -rf $(BIN) out
