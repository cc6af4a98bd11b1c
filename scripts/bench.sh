#!/usr/bin/env bash
# bench.sh is `make bench`: it runs each benchmark long enough to be stable (whole-VM boots a
# fixed number of paired runs, in-process ones for a fixed time), keeps the raw output in
# $BENCH_OUT (default bench.out), and prints one table: metric, cloche, baseline, ratio
# (median of paired runs, with its spread), goal (bench/goals.tsv).
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
out=${BENCH_OUT:-bench.out}
: >"$out"

# bench PACKAGE REGEXP BENCHTIME
bench() {
	echo "bench: $1 $2 (-benchtime $3)" >&2
	"$GO" test -run '^$' -bench "$2" -benchtime "$3" -benchmem "$1" | tee -a "$out" | grep -E '^(Benchmark|FAIL|ok)' >&2 ||
		{ echo "bench: go test $1 -bench $2 failed (the output is in $out)" >&2; exit 1; }
}

bench ./internal/build 'BenchmarkBootToWorkload$' 5x
bench ./internal/vmm 'BenchmarkBootToPoweroff$' 3x
bench ./internal/image/toolchain 'BenchmarkLoad$' 5x
bench ./internal/image/guestimage 'BenchmarkRunImageReads$' 20x
bench ./attest/verifier 'BenchmarkVerify' 3s
bench ./cmd/cloche 'BenchmarkVerifyProcess$' 20x
bench ./cmd/cloche-guest 'BenchmarkGuestFootprint$' 1x
bench ./measure '.' 2s
bench ./provenance '.' 2s
bench ./source 'BenchmarkPack$' 2s
# Two ~100 MB unpacks a pair: a fixed count, as 2s would give a single pair.
bench ./source 'BenchmarkUnpackTreeID$' 10x
bench ./internal/build 'BenchmarkHostOverhead$' 5x
bench ./internal/build 'BenchmarkDepsPath$' 5x
bench ./internal/agent 'BenchmarkAgentThroughput$' 20x
bench ./internal/agent 'BenchmarkScheduling$' 2s

echo
"$GO" run ./internal/benchpair/cmd/benchtable bench/goals.tsv <"$out"
