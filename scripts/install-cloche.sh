#!/bin/bash
# Installs the cloche binary the actions (action.yml, verify/action.yml) run, without Go when
# the action's ref is a release: the asset cloche-OS-ARCH of that release is downloaded through
# the GitHub API, its SHA-256 checked against the release's checksums.txt and its provenance
# checked with `gh attestation verify` against the release's provenance.sigstore.json (signed
# by the release workflow for that tag), then cached by version. When the ref has no release
# (a branch or a commit), cloche is built from the action's source with the Go release pinned
# in internal/image/guestimage/GO_TOOLCHAIN, fetched through the Go module proxy, so neither the binaries
# nor the guest image's measurement depend on the runner's Go.
#
# Usage: scripts/install-cloche.sh; prints the binary's path on stdout (the log goes to
# stderr, the path taken first). Environment:
#   CLOCHE_REF         the release tag to install (the action's ref); empty or a ref without
#                      a release builds from source
#   CLOCHE_REPOSITORY  the repository publishing the release (default cloche-dev/cloche)
#   CLOCHE_SOURCE      the action's source tree, for the build from source (default the tree
#                      this script is in)
#   CLOCHE_PROVENANCE  gh (default): the asset's provenance is verified with gh, independently
#                      of the downloaded binary; checksums: only checksums.txt binds it (it
#                      catches a corrupted download, not a swapped release)
#   CLOCHE_GUEST_AGENT 1: also install the guest init (cloche-guest) beside cloche
#   CLOCHE_USE_PATH    1 (default): a cloche already on PATH is used as is (the TEE host's
#                      operator provisions it with its guest image)
#   GITHUB_API_URL, GITHUB_SERVER_URL, GITHUB_TOKEN, RUNNER_TOOL_CACHE, RUNNER_TEMP: as the
#                      GitHub Actions environment gives them
set -euo pipefail

log() { echo "install-cloche: $*" >&2; }
die() {
	echo "install-cloche: error: $*" >&2
	exit 1
}

api=${GITHUB_API_URL:-https://api.github.com}
api=${api%/}
server=${GITHUB_SERVER_URL:-https://github.com}
repo=${CLOCHE_REPOSITORY:-cloche-dev/cloche}
ref=${CLOCHE_REF:-}
provenance=${CLOCHE_PROVENANCE:-gh}
src=${CLOCHE_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
checksums=checksums.txt
bundle=provenance.sigstore.json
# The workflow that builds and signs every release (.github/workflows/release.yml).
release_workflow=.github/workflows/release.yml

case $provenance in
gh | checksums) ;;
*) die "CLOCHE_PROVENANCE is \"$provenance\": want gh or checksums" ;;
esac
case $repo in
*/*) ;;
*) die "CLOCHE_REPOSITORY is \"$repo\": want OWNER/NAME" ;;
esac

# platform names the release asset for this machine, as Go names the platform.
platform() {
	local os arch
	case $(uname -s) in
	Linux) os=linux ;;
	Darwin) os=darwin ;;
	*) os=$(uname -s | tr '[:upper:]' '[:lower:]') ;;
	esac
	case $(uname -m) in
	x86_64 | amd64) arch=amd64 ;;
	aarch64 | arm64) arch=arm64 ;;
	*) arch=$(uname -m) ;;
	esac
	echo "$os-$arch"
}

sha256() {
	if command -v sha256sum >/dev/null 2>&1; then
		sha256sum "$1" | cut -d' ' -f1
	else
		shasum -a 256 "$1" | cut -d' ' -f1
	fi
}

# github GETs an API path with the headers GitHub asks for; extra curl arguments follow.
github() {
	local path=$1
	shift
	local auth=()
	if [ -n "${GITHUB_TOKEN:-}" ]; then
		auth=(-H "Authorization: Bearer $GITHUB_TOKEN")
	fi
	curl --silent --show-error --location --retry 3 --retry-delay 2 --proto '=https,http' \
		-H "X-GitHub-Api-Version: 2022-11-28" -H "User-Agent: cloche-install" \
		"${auth[@]}" "$@" "$api$path"
}

# asset_id prints the id of the asset named $2 in the release JSON file $1 (nothing if none).
asset_id() {
	if command -v jq >/dev/null 2>&1; then
		jq -r --arg n "$2" '.assets[] | select(.name == $n) | .id' "$1"
	elif command -v python3 >/dev/null 2>&1; then
		python3 -c 'import json, sys
for a in json.load(open(sys.argv[1]))["assets"]:
    if a["name"] == sys.argv[2]:
        print(a["id"])' "$1" "$2"
	else
		die "reading the release needs jq or python3, and neither is on PATH"
	fi
}

# find_release writes the release JSON of tag $ref to $1; it fails when there is no such
# release (404), and stops the script on any other error (a bad token is not "no release").
find_release() {
	local status
	status=$(github "/repos/$repo/releases/tags/$ref" -H "Accept: application/vnd.github+json" \
		--output "$1" --write-out '%{http_code}') || die "GET release $ref of $repo from $api failed"
	case $status in
	200) return 0 ;;
	404) return 1 ;;
	*) die "GET release $ref of $repo from $api: HTTP $status: $(head -c 300 "$1")" ;;
	esac
}

# download fetches asset $2 of the release JSON $1 into directory $3.
download() {
	local id
	id=$(asset_id "$1" "$2")
	[ -n "$id" ] || die "release $ref of $repo has no asset $2"
	github "/repos/$repo/releases/assets/$id" -H "Accept: application/octet-stream" \
		--fail --output "$3/$2" || die "downloading asset $2 of release $ref of $repo failed"
}

# check_sum refuses file $2 unless checksums file $1 lists its name with its SHA-256.
check_sum() {
	local name want got
	name=$(basename "$2")
	want=$(awk -v n="$name" 'length($1) == 64 && NF == 2 && ($2 == n || $2 == "*" n) { print tolower($1) }' "$1")
	[ "$(printf '%s' "$want" | grep -c .)" = 1 ] ||
		die "refusing $name: $checksums of release $ref of $repo lists it $(printf '%s' "$want" | grep -c .) times (want once)"
	got=$(sha256 "$2")
	[ "$got" = "$want" ] ||
		die "refusing $name of release $ref of $repo: SHA-256 mismatch: $checksums lists $want, the download is $got"
	log "$name: SHA-256 $got matches $checksums"
}

# check_provenance verifies file $2's provenance in bundle $1 with gh: signed by this
# repository's release workflow, for the tag, with the file a subject.
check_provenance() {
	local name
	name=$(basename "$2")
	if [ "$provenance" = checksums ]; then
		log "warning: $name: provenance not checked (CLOCHE_PROVENANCE=checksums): only $checksums binds it, which a swapped release replaces too"
		return
	fi
	command -v gh >/dev/null 2>&1 ||
		die "checking the provenance of $name needs gh (GitHub's CLI) on PATH; install it, or rely on $checksums alone (the actions' cloche-provenance: checksums, CLOCHE_PROVENANCE=checksums)"
	GH_NO_UPDATE_NOTIFIER=1 GH_PROMPT_DISABLED=1 gh attestation verify "$2" --bundle "$1" \
		--repo "$repo" --signer-workflow "${server#*://}/$repo/$release_workflow" \
		--source-ref "refs/tags/$ref" >&2 ||
		die "refusing $name of release $ref of $repo: its provenance in $bundle does not verify (above)"
	log "$name: provenance verified: signed by $repo/$release_workflow for refs/tags/$ref"
}

# cached prints the cached binary of directory $1 when it is complete, was checked as this
# run would check it (its .complete marker records how), and still matches the checksums
# recorded with it.
cached() {
	local f
	[ -f "$1.complete" ] && [ -x "$1/cloche" ] || return 1
	[ "$provenance" = checksums ] || [ "$(cat "$1.complete")" = gh ] || return 1
	for f in "$1"/cloche "$1"/cloche-guest; do
		[ -e "$f" ] || continue
		[ "$(sha256 "$f")" = "$(cat "$f.sha256" 2>/dev/null)" ] || return 1
	done
	[ "${CLOCHE_GUEST_AGENT:-0}" != 1 ] || [ -x "$1/cloche-guest" ] || return 1
	echo "$1/cloche"
}

# install_release installs cloche from release $ref into the tool cache and sets bin to it;
# bin stays empty when the release or its asset for this platform does not exist. (It is
# not called as a condition: set -e would not apply inside it.)
install_release() {
	local asset dir tmp names name
	asset=cloche-$(platform)
	dir=${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:-${TMPDIR:-/tmp}}}/cloche/$ref/$(platform)
	if bin=$(cached "$dir"); then
		log "path: cached release $ref of $repo ($asset, in $dir)"
		return
	fi
	bin=
	mkdir -p "$(dirname "$dir")"
	tmp=$(mktemp -d "$dir.tmp-XXXXXX")
	# shellcheck disable=SC2064 # expand now: tmp is local
	trap "rm -rf '$tmp'" EXIT
	if ! find_release "$tmp/release.json"; then
		log "release $ref of $repo does not exist"
		return
	fi
	if [ -z "$(asset_id "$tmp/release.json" "$asset")" ]; then
		log "release $ref of $repo has no asset $asset for this platform"
		return
	fi
	log "path: release $ref of $repo, asset $asset"
	names=("$asset")
	[ "${CLOCHE_GUEST_AGENT:-0}" != 1 ] || names+=(cloche-guest)
	download "$tmp/release.json" "$checksums" "$tmp"
	[ "$provenance" = checksums ] || download "$tmp/release.json" "$bundle" "$tmp"
	for name in "${names[@]}"; do
		download "$tmp/release.json" "$name" "$tmp"
		check_sum "$tmp/$checksums" "$tmp/$name"
		check_provenance "$tmp/$bundle" "$tmp/$name"
	done
	place "$tmp" "$asset" "$dir"
	trap - EXIT
	rm -rf "$tmp"
	log "installed in $dir"
	bin=$dir/cloche
}

# place moves the checked files of $1 into the cache directory $3 (asset $2 as cloche),
# recording each digest, after checking that the binary runs and is the release's version.
place() {
	local tmp=$1 asset=$2 dir=$3 f got
	mkdir -p "$tmp/out"
	mv "$tmp/$asset" "$tmp/out/cloche"
	[ ! -e "$tmp/cloche-guest" ] || mv "$tmp/cloche-guest" "$tmp/out/cloche-guest"
	for f in "$tmp"/out/*; do
		chmod 0755 "$f"
		sha256 "$f" >"$f.sha256"
	done
	got=$(CLOCHE_STATE_DIR="$tmp/state" "$tmp/out/cloche" version 2>&1 | head -n 1) ||
		die "the downloaded cloche does not run: $got"
	[ "$got" = "cloche $ref" ] || die "refusing $asset of release $ref: it says it is \"$got\", not \"cloche $ref\""
	rm -rf "$dir" "$dir.complete"
	# -T: never into a directory another job created meanwhile.
	mv -T "$tmp/out" "$dir" || die "$dir appeared while installing (another job installing the same version?): run again"
	echo "$provenance" >"$dir.complete"
}

# build_source builds cloche from the action's source with the pinned Go release.
build_source() {
	local toolchain target=bin/cloche
	command -v go >/dev/null 2>&1 ||
		die "no release to install for ref \"${ref:-(none)}\" of $repo, and building from source needs Go (any release that can fetch $(cat "$src/internal/image/guestimage/GO_TOOLCHAIN" 2>/dev/null || echo "the pinned one")) on PATH"
	toolchain=$(tr -d '[:space:]' <"$src/internal/image/guestimage/GO_TOOLCHAIN") ||
		die "$src/internal/image/guestimage/GO_TOOLCHAIN: not readable (is CLOCHE_SOURCE cloche's source tree?)"
	log "path: building from source in $src with GOTOOLCHAIN=$toolchain ($(GOTOOLCHAIN=$toolchain go version))"
	[ "${CLOCHE_GUEST_AGENT:-0}" != 1 ] || target=build
	make -C "$src" "$target" GOTOOLCHAIN="$toolchain" >&2 || die "building cloche from $src failed (above)"
	bin=$src/bin/cloche
}

main() {
	if [ "${CLOCHE_USE_PATH:-1}" = 1 ] && command -v cloche >/dev/null 2>&1; then
		log "path: cloche on PATH, $(command -v cloche)"
		command -v cloche
		return
	fi
	bin=
	if [ -z "$ref" ]; then
		log "no release ref given (a local action or a commit): building from source"
	elif [[ $ref =~ ^[0-9a-f]{40}$ ]]; then
		log "ref $ref is a commit: building from source"
	else
		install_release
		[ -n "$bin" ] || log "building from source instead"
	fi
	[ -n "$bin" ] || build_source
	echo "$bin"
}

main
