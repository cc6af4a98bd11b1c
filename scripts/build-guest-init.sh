#!/bin/bash
# Builds the guest init (cmd/cloche-guest) reproducibly, the one way every caller builds it
# (make, the test fixtures, the release workflow): the Go release pinned in
# internal/image/guestimage/GO_TOOLCHAIN (fetched from the Go module proxy when it is not the local one),
# static, -trimpath, no build id, and every environment setting that changes the bytes fixed,
# so the same commit gives the same agent on any machine.
# Usage: scripts/build-guest-init.sh OUT
set -euo pipefail
out=${1:?usage: scripts/build-guest-init.sh OUT}
case $out in
/*) ;;
*) out=$PWD/$out ;;
esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
toolchain=$(tr -d '[:space:]' <"$root/internal/image/guestimage/GO_TOOLCHAIN")
cd "$root"
env GOTOOLCHAIN="$toolchain" CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOAMD64=v1 GOEXPERIMENT= \
	GOFLAGS=-buildvcs=false GO111MODULE=on \
	"${GO:-go}" build -trimpath -ldflags "-s -w -buildid=" -o "$out" ./cmd/cloche-guest
