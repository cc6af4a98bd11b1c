# cloche: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

VERSION ?= 0.1.0-dev
BIN := bin
# Both binaries are static and reproducible: the guest agent is part of the measured guest
# image, so the same source must give the same bytes.
# The commit `cloche version` prints (GOFLAGS has -buildvcs=false, so Go records none).
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -buildid= -X main.version=$(VERSION) -X main.commit=$(COMMIT)"

.PHONY: all build deps demo test vet actionlint fuzz fuzz-short bench clean

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

# actionlint from the Go module proxy at a pinned version. It lints this project's workflows
# and the examples, and through `uses: ./` and `uses: ./verify` both actions' metadata.
ACTIONLINT_VERSION := v1.7.7
$(BIN)/actionlint:
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

actionlint: $(BIN)/actionlint
	$(BIN)/actionlint .github/workflows/*.yml examples/workflows/*.yml

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The whole test suite, real QEMU boots included, then a brief fuzz of the two parsers that
# read untrusted evidence bytes (every fuzz target's seeds already ran as plain tests). The
# limits are execution counts, not durations: with a duration, Go's fuzzer reports "context
# deadline exceeded" as a failure when time runs out while a slow input is being minimized.
test: deps build vet actionlint
	$(GO) test -timeout 75m ./...
	$(MAKE) fuzz-short

fuzz-short:
	$(GO) test -run '^$$' -fuzz '^FuzzTDXQuote$$' -fuzztime 5000x -fuzzminimizetime 50x ./attest/
	$(GO) test -run '^$$' -fuzz '^FuzzEvidenceFile$$' -fuzztime 5000x -fuzzminimizetime 50x ./attest/

# A short run of every fuzz target.
FUZZTIME ?= 10s
fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./...

clean:
	rm -rf $(BIN) out
