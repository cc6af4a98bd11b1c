package progress

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the ticker goroutine and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Off a terminal, a phase logs a start line, "still running" lines while it runs, and how
// it ended, each with a timestamp and the elapsed time.
func TestLinesOffTerminal(t *testing.T) {
	var out syncBuffer
	m := New(Options{Log: slog.New(slog.NewTextHandler(&out, nil)), Interval: 20 * time.Millisecond})
	p := m.Begin(context.Background(), "toolchain image", "packages", "gcc")
	p.Step("mmdebstrap")
	time.Sleep(70 * time.Millisecond)
	p.Done()
	p.Done() // a second end is ignored
	got := out.String()
	for _, want := range []string{
		`msg="toolchain image: started" packages=gcc`,
		`msg="toolchain image: mmdebstrap"`,
		`msg="toolchain image: still running" elapsed=0s step=mmdebstrap`,
		`msg="toolchain image: done" elapsed=0s`,
		"time=",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Count(got, ": done") != 1 {
		t.Errorf("the phase ended more than once:\n%s", got)
	}
	if strings.Contains(got, "\r") {
		t.Errorf("a live line off a terminal:\n%q", got)
	}
}

// Cached and Fail say the truth about how the phase ended.
func TestOutcomes(t *testing.T) {
	var out syncBuffer
	m := New(Options{Log: slog.New(slog.NewTextHandler(&out, nil))})
	m.Begin(context.Background(), "guest image").Cached("dir", "/x")
	m.Begin(context.Background(), "kernel download").Fail(errors.New("no network"))
	got := out.String()
	if !strings.Contains(got, `msg="guest image: cached" elapsed=0s dir=/x`) || !strings.Contains(got, `msg="kernel download: failed" elapsed=0s err="no network"`) {
		t.Fatalf("outcomes:\n%s", got)
	}
}

// On a terminal the live line is redrawn with the elapsed time, cleared before other
// output and redrawn after it, and gone when the phase ends, which is logged.
func TestLiveLine(t *testing.T) {
	var term, log syncBuffer
	now := time.Unix(1000, 0)
	var clock sync.Mutex
	tick := func() time.Time { clock.Lock(); defer clock.Unlock(); now = now.Add(time.Second); return now }
	m := New(Options{Live: true, Terminal: &term, Log: slog.New(slog.NewTextHandler(&log, nil)), LiveInterval: 10 * time.Millisecond, Now: tick})
	p := m.Begin(context.Background(), "VM run")
	p.Step("booting")
	time.Sleep(50 * time.Millisecond)
	w := m.Writer(&term)
	if _, err := w.Write([]byte("a console line\n")); err != nil {
		t.Fatal(err)
	}
	// A partial line is not overwritten by the next redraw.
	if _, err := w.Write([]byte("partial")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(30 * time.Millisecond)
	if !strings.HasSuffix(term.String(), "partial") {
		t.Errorf("the live line was drawn over a partial line:\n%q", term.String())
	}
	if _, err := w.Write([]byte(" line\n")); err != nil {
		t.Fatal(err)
	}
	p.Done()
	got := term.String()
	if !strings.Contains(got, "partial line\n\r\x1b[KVM run: booting") {
		t.Errorf("the live line is not back after the partial line ended:\n%q", got)
	}
	if !strings.Contains(got, "\r\x1b[KVM run: booting ") {
		t.Errorf("no live line with the step:\n%q", got)
	}
	if !strings.Contains(got, "\r\x1b[Ka console line\n\r\x1b[KVM run: booting") {
		t.Errorf("other output is not put before a redrawn live line:\n%q", got)
	}
	if !strings.HasSuffix(got, "\r\x1b[K") {
		t.Errorf("the live line stays after the phase ended:\n%q", got)
	}
	if !strings.Contains(log.String(), `msg="VM run: done"`) || strings.Contains(log.String(), "started") {
		t.Errorf("log on a terminal: only the outcome:\n%s", log.String())
	}
}

// A nil Meter (a library called without one) does nothing and does not crash.
func TestNil(t *testing.T) {
	var m *Meter
	p := m.Begin(context.Background(), "x")
	p.Step("y")
	p.Done()
	p.Fail(errors.New("z"))
	var b bytes.Buffer
	if m.Writer(&b) != &b {
		t.Fatal("a nil Meter's Writer must be the writer itself")
	}
}
