#!/usr/bin/env bash
# Runs every fuzz target in the module for a bounded time each: scripts/fuzz.sh [LIMIT]
# LIMIT is a -fuzztime value: a duration (10s) or an execution count (2000x). make fuzz-short
# uses counts: with a duration, Go's fuzzer reports "context deadline exceeded" as a failure
# when time runs out while a slow input is being minimized.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${1:-10s}
minimize=()
if [[ $limit == *x ]]; then minimize=(-fuzzminimizetime 50x); fi
n=0
while read -r f; do
	pkg=./$(dirname "${f#./}")
	while read -r name; do
		echo "== $pkg $name ($limit)"
		go test -run '^$' -fuzz "^${name}\$" -fuzztime "$limit" "${minimize[@]}" "$pkg"
		n=$((n + 1))
	done < <(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | sed 's/^func //')
done < <(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
((n > 0)) || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }
echo "== fuzz: $n targets, $limit each"
