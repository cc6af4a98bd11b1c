#!/usr/bin/env bash
# test.sh is `make test` (and so .ci/run): the stages of the test suite, each run on its own
# so that its time is printed, with the fresh-machine check (make test-fresh: install-deps.sh
# in a clean bookworm root) before anything trusts this machine's own packages. A failing
# stage is named in the last line together with the command and its exit status.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive

TIMES=()
T0=$SECONDS

summary() {
	echo "== test: stage times"
	printf '   %s\n' "${TIMES[@]}"
	echo "   total       $((SECONDS - T0))s"
}

# stage NAME CMD...: runs CMD, records its time, and stops naming the stage if it fails.
stage() {
	local name=$1 start=$SECONDS rc=0
	shift
	echo "== test: $name ($*) at $(date -u +%H:%M:%SZ)"
	"$@" || rc=$?
	local took=$((SECONDS - start))
	if ((rc == 0)); then
		TIMES+=("$(printf '%-11s %5ss' "$name" "$took")")
		echo "== test: $name done in ${took}s"
		return 0
	fi
	TIMES+=("$(printf '%-11s %5ss  FAILED' "$name" "$took")")
	summary
	echo "test: stage '$name' failed after ${took}s: '$*' exited with status $rc (the reason is above)" >&2
	exit "$rc"
}

MAKE=${MAKE:-make}
stage deps "$MAKE" --no-print-directory deps
stage build "$MAKE" --no-print-directory build
stage test-fresh "$MAKE" --no-print-directory test-fresh
stage vet "$MAKE" --no-print-directory vet shellcheck actionlint
stage tests "$MAKE" --no-print-directory test-go
stage interop "$MAKE" --no-print-directory test-interop
stage fuzz "$MAKE" --no-print-directory fuzz-short
summary
