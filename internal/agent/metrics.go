package agent

import (
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
)

// histogram is a Prometheus histogram with fixed upper bounds (seconds).
type histogram struct {
	bounds []float64
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	count  uint64
}

func newHistogram(bounds ...float64) *histogram {
	return &histogram{bounds: bounds, counts: make([]uint64, len(bounds)+1)}
}

func (h *histogram) observe(d time.Duration) {
	v := d.Seconds()
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i]++
	h.sum += v
	h.count++
}

// metrics are the agent's counters. All access goes through mu; the exposition is written
// by hand in the Prometheus text format (version 0.0.4), so the agent needs no client
// library.
type metrics struct {
	mu             sync.Mutex
	queueWait      *histogram
	launchDuration *histogram
	buildDuration  *histogram
	finished       map[State]uint64
	evidenceErrors uint64
	rejected       map[string]uint64 // by error code
	submitted      uint64
}

func newMetrics() *metrics {
	return &metrics{
		queueWait:      newHistogram(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
		launchDuration: newHistogram(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
		buildDuration:  newHistogram(1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
		finished:       map[State]uint64{},
		rejected:       map[string]uint64{},
	}
}

func (m *metrics) observe(h func(*metrics) *histogram, d time.Duration) {
	m.mu.Lock()
	h(m).observe(d)
	m.mu.Unlock()
}

func (m *metrics) add(f func(*metrics)) {
	m.mu.Lock()
	f(m)
	m.mu.Unlock()
}

// gauges are read from the agent at scrape time.
type gauges struct {
	byState map[State]int
	budget  Budget
	inUse   Usage
	queued  int
}

// write renders the exposition.
func (m *metrics) write(w io.Writer, g gauges) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b strings.Builder
	family := func(name, typ, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, typ)
	}

	family("cloche_agent_jobs", "gauge", "Jobs the agent knows, by state (finished jobs until they are pruned).")
	for _, s := range States {
		fmt.Fprintf(&b, "cloche_agent_jobs{state=%q} %d\n", s, g.byState[s])
	}
	family("cloche_agent_jobs_submitted_total", "counter", "Jobs accepted into the queue.")
	fmt.Fprintf(&b, "cloche_agent_jobs_submitted_total %d\n", m.submitted)
	family("cloche_agent_jobs_finished_total", "counter", "Jobs that ended since the agent started, by final state.")
	for _, s := range []State{StateSucceeded, StateFailed, StateCancelled} {
		fmt.Fprintf(&b, "cloche_agent_jobs_finished_total{state=%q} %d\n", s, m.finished[s])
	}
	family("cloche_agent_requests_rejected_total", "counter", "API requests answered with an error, by error code.")
	for _, code := range []string{CodeBadRequest, CodeTooLarge, CodeForbidden, CodeNotFound, CodeBusy, CodeConflict, CodeInternal} {
		fmt.Fprintf(&b, "cloche_agent_requests_rejected_total{code=%q} %d\n", code, m.rejected[code])
	}
	family("cloche_agent_evidence_fetch_errors_total", "counter", "Jobs whose evidence could not be obtained, completed or checked on the host.")
	fmt.Fprintf(&b, "cloche_agent_evidence_fetch_errors_total %d\n", m.evidenceErrors)
	family("cloche_agent_queue_length", "gauge", "Jobs waiting for the budget.")
	fmt.Fprintf(&b, "cloche_agent_queue_length %d\n", g.queued)

	family("cloche_agent_budget", "gauge", "The resource budget, by resource.")
	fmt.Fprintf(&b, "cloche_agent_budget{resource=\"vcpus\"} %d\ncloche_agent_budget{resource=\"memory_mib\"} %d\ncloche_agent_budget{resource=\"vms\"} %d\n",
		g.budget.VCPUs, g.budget.MemoryMiB, g.budget.VMs)
	family("cloche_agent_budget_in_use", "gauge", "What running jobs hold, by resource.")
	fmt.Fprintf(&b, "cloche_agent_budget_in_use{resource=\"vcpus\"} %d\ncloche_agent_budget_in_use{resource=\"memory_mib\"} %d\ncloche_agent_budget_in_use{resource=\"vms\"} %d\ncloche_agent_budget_in_use{resource=\"disk_bytes\"} %d\n",
		g.inUse.VCPUs, g.inUse.MemoryMiB, g.inUse.VMs, g.inUse.DiskBytes)

	writeHistogram(&b, "cloche_agent_queue_wait_seconds", "Time from submission to launch.", m.queueWait)
	writeHistogram(&b, "cloche_agent_launch_duration_seconds", "Time from launch to the VM starting (source packing, disks).", m.launchDuration)
	writeHistogram(&b, "cloche_agent_build_duration_seconds", "Time from the VM starting to the job's end (build, output, evidence, signing).", m.buildDuration)
	_, err := io.WriteString(w, b.String())
	return err
}

func writeHistogram(b *strings.Builder, name, help string, h *histogram) {
	fmt.Fprintf(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name)
	var cum uint64
	for i, bound := range h.bounds {
		cum += h.counts[i]
		fmt.Fprintf(b, "%s_bucket{le=%q} %d\n", name, formatFloat(bound), cum)
	}
	cum += h.counts[len(h.bounds)]
	fmt.Fprintf(b, "%s_bucket{le=\"+Inf\"} %d\n", name, cum)
	fmt.Fprintf(b, "%s_sum %s\n%s_count %d\n", name, formatFloat(h.sum), name, h.count)
}

func formatFloat(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
