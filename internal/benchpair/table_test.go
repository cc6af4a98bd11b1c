package benchpair

import (
	"bytes"
	"strings"
	"testing"
)

const sampleOutput = `goos: linux
BenchmarkBootToWorkload-2   	       5	9123456789 ns/op	         4.73 boot-baseline-s	         8.78 boot-s	         1.83 boot-ratio	         0.20 boot-ratio-spread
BenchmarkVerifySNP/cloche-2 	     300	   3800000 ns/op	  120000 B/op	     900 allocs/op
BenchmarkVerifySNP/go-sev-guest-2         	     400	   3200000 ns/op
BenchmarkSNPGuestImage-2   	      10	 120000000 ns/op	 101.1 MB/s	         9.5 ms/MB
PASS
ok  	github.com/cloche-dev/cloche/build	60.1s
`

func TestParseAndTable(t *testing.T) {
	rows, err := Parse(strings.NewReader(sampleOutput))
	if err != nil {
		t.Fatal(err)
	}
	byMetric := map[string]Row{}
	for _, r := range rows {
		byMetric[r.Metric] = r
	}
	boot, ok := byMetric["BenchmarkBootToWorkload/boot"]
	if !ok || boot.Cloche != 8.78 || boot.Baseline != 4.73 || boot.Ratio != 1.83 || boot.Spread != 0.20 {
		t.Errorf("paired row: %+v (rows %+v)", boot, rows)
	}
	if _, ok := byMetric["BenchmarkBootToWorkload"]; ok {
		t.Error("a paired benchmark's ns/op got a row of its own")
	}
	snp, ok := byMetric["BenchmarkVerifySNP vs go-sev-guest"]
	if !ok || snp.Cloche != 3.8 || snp.Baseline != 3.2 || snp.Ratio < 1.18 || snp.Ratio > 1.19 {
		t.Errorf("sibling row: %+v", snp)
	}
	if r, ok := byMetric["BenchmarkSNPGuestImage"]; !ok || r.HasBaseline {
		t.Errorf("plain rows missing: %+v", rows)
	}

	goals, err := ParseGoals(strings.NewReader("# goals\nBenchmarkBootToWorkload/boot\t<= 1.1\nBenchmarkVerifySNP vs go-sev-guest\t<= 1.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyGoals(rows, goals); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := WriteTable(&out, rows); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"metric", "BenchmarkBootToWorkload/boot", "1.83 (±0.1)", "<= 1.1 NOT met", "<= 1.5 met"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, out.String())
		}
	}
	if err := ApplyGoals(rows, map[string]string{"BenchmarkVerifySNP vs go-sev-guest": "about 2"}); err == nil {
		t.Error("a malformed goal was accepted")
	}
}

// A goal keyed "METRIC UNIT" applies to that one of a benchmark's metrics only.
func TestGoalOnOneUnit(t *testing.T) {
	rows, err := Parse(strings.NewReader("BenchmarkRunImageReads-2   20   116255 ns/op   1682 image-bytes-read/run   31842304 image-bytes/run\n"))
	if err != nil {
		t.Fatal(err)
	}
	if err := ApplyGoals(rows, map[string]string{"BenchmarkRunImageReads image-bytes-read/run": "<= 65536"}); err != nil {
		t.Fatal(err)
	}
	var goals int
	for _, r := range rows {
		switch {
		case r.Unit == "image-bytes-read/run":
			if !r.GoalGiven || !r.GoalMet {
				t.Errorf("the bytes-read row: %+v", r)
			}
			goals++
		case r.GoalGiven:
			t.Errorf("the goal also applied to %+v", r)
		}
	}
	if goals != 1 || len(rows) != 2 { // ns/op says nothing beside the benchmark's own metrics
		t.Errorf("rows %+v", rows)
	}
}
