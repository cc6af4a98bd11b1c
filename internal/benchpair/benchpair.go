// Package benchpair reports a benchmark as paired ratios: in each iteration the baseline
// and the candidate run back to back on the same machine, so that load from elsewhere
// affects both, and the figure is the median of the per-pair ratios with their spread,
// never a single absolute time compared against a number written down elsewhere.
package benchpair

import (
	"slices"
	"testing"
	"time"
)

// Pairs collects (baseline, candidate) durations.
type Pairs struct {
	base, cand []time.Duration
}

// Add records one pair.
func (p *Pairs) Add(baseline, candidate time.Duration) {
	p.base = append(p.base, baseline)
	p.cand = append(p.cand, candidate)
}

// Summary is what Report reports.
type Summary struct {
	BaselineMedian, CandidateMedian time.Duration
	// Ratio is the median of candidate/baseline over the pairs; RatioMin and RatioMax
	// their spread.
	Ratio, RatioMin, RatioMax float64
	N                         int
}

// Summarize computes the medians and the ratio's median and spread.
func (p *Pairs) Summarize() Summary {
	n := len(p.base)
	if n == 0 {
		return Summary{}
	}
	ratios := make([]float64, n)
	for i := range p.base {
		ratios[i] = float64(p.cand[i]) / float64(max(p.base[i], 1))
	}
	slices.Sort(ratios)
	return Summary{BaselineMedian: median(p.base), CandidateMedian: median(p.cand),
		Ratio: medianF(ratios), RatioMin: ratios[0], RatioMax: ratios[n-1], N: n}
}

// Report adds the summary to b's output as metrics named after prefix: the two medians
// in seconds, the median ratio and its spread (max/min of the ratios).
func (p *Pairs) Report(b *testing.B, prefix string) {
	s := p.Summarize()
	if s.N == 0 {
		return
	}
	b.ReportMetric(s.BaselineMedian.Seconds(), prefix+"-baseline-s")
	b.ReportMetric(s.CandidateMedian.Seconds(), prefix+"-s")
	b.ReportMetric(s.Ratio, prefix+"-ratio")
	b.ReportMetric(s.RatioMax-s.RatioMin, prefix+"-ratio-spread")
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func medianF(s []float64) float64 {
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
