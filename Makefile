# cloche: the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
export GOTOOLCHAIN := local
export GOFLAGS := -buildvcs=false

VERSION ?= 0.1.0-dev
BIN := bin
# Both binaries are static and reproducible: the guest init is part of the measured guest
# image, so the same source must give the same bytes.
# The commit `cloche version` prints (GOFLAGS has -buildvcs=false, so Go records none).
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -buildid= -X main.version=$(VERSION) -X main.commit=$(COMMIT)"

.PHONY: all build release-bins deps demo test test-go test-fresh test-interop vet shellcheck actionlint fuzz fuzz-short bench clean

# $(call explain,WHAT) ends a recipe line: if the line fails, one line names WHAT failed and
# its exit status before make's own "Error N", so no failure is a bare "Error 1".
explain = || { rc=$$?; echo "make $@: $(1) failed (exit status $$rc)" >&2; exit $$rc; }

all: build

build: $(BIN)/cloche $(BIN)/cloche-guest

$(BIN)/cloche: FORCE
	$(GOBUILD) -o $@ ./cmd/cloche $(call explain,go build ./cmd/cloche)

# The guest init is built with the Go release pinned in internal/image/guestimage/GO_TOOLCHAIN, whatever
# Go runs make: its bytes are part of the guest image's launch measurement.
$(BIN)/cloche-guest: FORCE
	GO=$(GO) bash scripts/build-guest-init.sh $@ $(call explain,scripts/build-guest-init.sh)

# What a release publishes (.github/workflows/release.yml builds it in the confidential VM):
# cloche for each platform it runs on (Linux only: the VMM and the sandbox are Linux's), named
# cloche-OS-ARCH as scripts/install-cloche.sh picks them, the guest init, and checksums.txt
# (sha256sum's format) listing them, every one a subject of the release's provenance.
RELEASE_PLATFORMS := linux-amd64 linux-arm64
RELEASE_BINS := $(foreach p,$(RELEASE_PLATFORMS),$(BIN)/cloche-$(p))

release-bins: $(BIN)/checksums.txt

$(RELEASE_BINS): $(BIN)/cloche-%: FORCE
	GOOS=$(word 1,$(subst -, ,$*)) GOARCH=$(word 2,$(subst -, ,$*)) GOAMD64=v1 GOARM64=v8.0 \
	  $(GOBUILD) -o $@ ./cmd/cloche $(call explain,go build ./cmd/cloche for $*)

$(BIN)/checksums.txt: $(RELEASE_BINS) $(BIN)/cloche-guest
	cd $(BIN) && sha256sum $(notdir $^) > checksums.txt.tmp && mv checksums.txt.tmp checksums.txt $(call explain,sha256sum)

FORCE:

# Installs what is missing: QEMU 10 and the cloud kernel from bookworm-backports (the suite
# is derived from this machine's own apt source), e2fsprogs, veritysetup, mmdebstrap, ...
deps:
	bash scripts/install-deps.sh $(call explain,scripts/install-deps.sh (its last line says which package or command and why))

# The fresh-machine check: a clean bookworm root from mmdebstrap, install-deps.sh run inside
# it, then every tool and version checked and the guest image (kernel download included)
# built there. The mmdebstrap base is cached in /var/cache/cloche-ci (CLOCHE_CI_CACHE).
test-fresh: build
	bash scripts/test-fresh.sh $(call explain,scripts/test-fresh.sh (its FAILED line says which stage and why))

# Builds everything, runs examples/hello-c in the (simulated) confidential VM, verifies it.
demo: deps build
	bash scripts/demo.sh $(call explain,scripts/demo.sh)

# actionlint from the Go module proxy at a pinned version. It lints this project's workflows
# and the examples, and through `uses: ./` and `uses: ./verify` both actions' metadata.
ACTIONLINT_VERSION := v1.7.7
$(BIN)/actionlint:
	GOBIN=$(abspath $(BIN)) $(GO) install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)

actionlint: $(BIN)/actionlint
	$(BIN)/actionlint .github/workflows/*.yml examples/workflows/*.yml $(call explain,actionlint (the findings are above))

vet:
	$(GO) vet ./... $(call explain,go vet (the findings are above))
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "make vet: gofmt needed on:" >&2; echo "$$out" >&2; exit 1; fi

# Every shell script in the repository, found by its #! line (so new scripts are included).
shellcheck:
	@files=$$( (git ls-files --cached --others --exclude-standard 2>/dev/null || find . -type f -not -path './.git/*') | while read -r f; do \
	  [ -f "$$f" ] && head -n 1 "$$f" | grep -qE '^#!.*[/ ](ba|da)?sh$$' && echo "$$f"; done; true); \
	  echo "shellcheck" $$files; \
	  shellcheck -x $$files $(call explain,shellcheck (the findings are above))

# The whole test suite, real QEMU boots included, then a brief fuzz of every fuzz target
# (2000 executions each; their seeds already ran as plain tests).
# scripts/test.sh runs the stages (deps, build, test-fresh, vet, tests, interop, fuzz) one by one and
# prints each one's time.
test:
	bash scripts/test.sh

# Stock Sigstore verifiers (cosign v2 and v3, gh, sigstore-js; pinned, built or installed once
# and cached by version in $CLOCHE_CI_CACHE/tools, default /var/cache/cloche-ci/tools) verify a real
# simulated build's bundles with the commands docs/interop.md gives, and reject tamperings.
test-interop:
	bash scripts/test-interop.sh $(call explain,scripts/test-interop.sh (its last line says which tool or check and why))

test-go:
	$(GO) test -timeout 75m ./... $(call explain,go test ./... (the failing tests are above))

fuzz-short:
	bash scripts/fuzz.sh 2000x $(call explain,scripts/fuzz.sh 2000x (the failing target is above))

# A short run of every fuzz target.
FUZZTIME ?= 10s
fuzz:
	bash scripts/fuzz.sh $(FUZZTIME)

# One table (metric, cloche, baseline, ratio, goal): scripts/bench.sh runs each benchmark long
# enough to be stable and compares it with a baseline run in the same command.
bench: build
	bash scripts/bench.sh $(call explain,scripts/bench.sh)

clean:
	rm -rf $(BIN) out
