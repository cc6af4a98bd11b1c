#!/usr/bin/env bash
# test-interop.sh is `make test-interop`: it builds the stock Sigstore verifiers nobody here
# wrote (cosign v2 and v3 and gh from source through the Go module proxy, sigstore-js from
# npm), each at a pinned version and cached by version outside the clone, so a fresh clone
# reuses them; then it runs TestInterop (cmd/cloche), which verifies a real simulated build's
# bundles with the commands docs/interop.md gives and checks three tamperings are rejected.
#
# The cache is $CLOCHE_CI_CACHE/tools (default /var/cache/cloche-ci/tools), one directory per
# tool and version, each made in a temporary directory and renamed into place when complete.
set -euo pipefail
cd "$(dirname "$0")/.."

# The versions docs/interop.md names.
COSIGN_V2=v2.6.5
COSIGN_V3=v3.1.3
GH=v2.100.0
SIGSTORE_JS_PACKAGES=(@sigstore/verify@3.1.1 @sigstore/bundle@4.0.0 @sigstore/core@3.2.1 @sigstore/protobuf-specs@0.5.2)

CACHE=${CLOCHE_CI_CACHE:-/var/cache/cloche-ci}/tools
GO=${GO:-go}

die() {
	echo "test-interop: $*" >&2
	exit 1
}

# cached NAME: whether $CACHE/NAME exists; it only ever appears complete (see publish).
cached() {
	[[ -d "$CACHE/$1" ]]
}

# publish TMP NAME: moves a completed build into the cache under NAME.
publish() {
	rm -rf "${CACHE:?}/$2"
	mv "$1" "$CACHE/$2"
}

# go_tool NAME VERSION PACKAGE: builds PACKAGE@VERSION into $CACHE/NAME-VERSION/bin once.
go_tool() {
	local name=$1 version=$2 pkg=$3 dir=$1-$2 tmp
	if cached "$dir"; then
		echo "test-interop: $name $version cached in $CACHE/$dir"
		return 0
	fi
	echo "test-interop: building $name $version from $pkg (minutes; cached afterwards)"
	tmp=$(mktemp -d "$CACHE/.$dir.XXXXXX")
	GOBIN="$tmp/bin" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-buildvcs=false \
		"$GO" install -trimpath "$pkg@$version" ||
		{ rm -rf "$tmp"; die "go install $pkg@$version failed (the reason is above)"; }
	publish "$tmp" "$dir"
}

# sigstore_js: installs the pinned @sigstore packages into $CACHE/sigstore-js-VERSION once.
sigstore_js() {
	local version=${SIGSTORE_JS_PACKAGES[0]##*@} dir tmp
	dir=sigstore-js-$version
	if cached "$dir"; then
		echo "test-interop: sigstore-js $version cached in $CACHE/$dir"
		return 0
	fi
	command -v npm >/dev/null || die "npm is not installed (it comes with node $NODE_MIN or later)"
	echo "test-interop: installing ${SIGSTORE_JS_PACKAGES[*]} from npm"
	tmp=$(mktemp -d "$CACHE/.$dir.XXXXXX")
	echo '{"private": true}' >"$tmp/package.json"
	npm install --prefix "$tmp" --no-audit --no-fund --save-exact "${SIGSTORE_JS_PACKAGES[@]}" ||
		{ rm -rf "$tmp"; die "npm install ${SIGSTORE_JS_PACKAGES[*]} failed (the reason is above)"; }
	publish "$tmp" "$dir"
}

# @sigstore/verify 3.1.1 declares node ^20.17.0 || >=22.9.0 (Debian 12's own nodejs is 18).
NODE_MIN=20.17.0

# node_ok: whether node is at least $NODE_MIN.
node_ok() {
	local have
	have=$(node --version 2>/dev/null) || return 1
	[[ "$(printf '%s\n%s\n' "$NODE_MIN" "${have#v}" | sort -V | head -n 1)" == "$NODE_MIN" ]]
}

mkdir -p "$CACHE"
node_ok || die "node $NODE_MIN or later is needed for sigstore-js (found: $(node --version 2>/dev/null || echo none))"
go_tool cosign "$COSIGN_V2" github.com/sigstore/cosign/v2/cmd/cosign
go_tool cosign "$COSIGN_V3" github.com/sigstore/cosign/v3/cmd/cosign
go_tool gh "$GH" github.com/cli/cli/v2/cmd/gh
sigstore_js

# The layout TestInterop reads ($CLOCHE_INTEROP_TOOLS): one directory per tool, whatever its
# version, put first on PATH for that tool's commands.
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
ln -s "$CACHE/cosign-$COSIGN_V2/bin" "$tools/cosign-v2"
ln -s "$CACHE/cosign-$COSIGN_V3/bin" "$tools/cosign-v3"
ln -s "$CACHE/gh-$GH/bin" "$tools/gh"
ln -s "$CACHE/sigstore-js-${SIGSTORE_JS_PACKAGES[0]##*@}" "$tools/sigstore-js"
"$tools/cosign-v2/cosign" version 2>&1 | grep -m1 GitVersion || true
"$tools/cosign-v3/cosign" version 2>&1 | grep -m1 GitVersion || true
"$tools/gh/gh" --version | head -n 1
echo "sigstore-js: node $(node --version), ${SIGSTORE_JS_PACKAGES[*]}"

# The VM's console lines are left out; each tool's verdict on each bundle is shown.
rc=0
CLOCHE_INTEROP_TOOLS=$tools "$GO" test -count=1 -timeout 20m -run '^TestInterop$' -v ./cmd/cloche >"$tools/log" 2>&1 || rc=$?
grep -E '^(=== RUN|--- |\s+--- |PASS|FAIL|ok|\s+(interop|e2e)_test)' "$tools/log" || true
if ((rc != 0)); then
	tail -n 40 "$tools/log" >&2
	die "TestInterop failed with status $rc (its output is above)"
fi
