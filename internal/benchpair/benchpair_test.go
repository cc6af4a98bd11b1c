package benchpair

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var p Pairs
	if (p.Summarize() != Summary{}) {
		t.Fatal("empty pairs")
	}
	p.Add(10*time.Second, 20*time.Second) // 2.0
	p.Add(20*time.Second, 30*time.Second) // 1.5
	p.Add(10*time.Second, 40*time.Second) // 4.0
	s := p.Summarize()
	if s.N != 3 || s.Ratio != 2.0 || s.RatioMin != 1.5 || s.RatioMax != 4.0 || s.BaselineMedian != 10*time.Second || s.CandidateMedian != 30*time.Second {
		t.Fatalf("%+v", s)
	}
	p.Add(20*time.Second, 20*time.Second) // 1.0: even count
	if s := p.Summarize(); s.Ratio != 1.75 || s.BaselineMedian != 15*time.Second {
		t.Fatalf("even: %+v", s)
	}
}
