// Package progress shows a person what phase long work is in and for how long: the
// toolchain image assembly, the kernel download, the guest image build, the VM run.
//
// On a terminal a Meter keeps one live status line ("toolchain image: mmdebstrap 1m02s")
// that it rewrites every second and clears before anything else is written through
// Meter.Writer. Anywhere else (a pipe, a CI log, --log-json) it logs plain timestamped
// lines: one when a phase starts, one every Interval while it runs, one when it ends, so a
// CI log shows that a silent step is alive.
//
// A nil *Meter and a nil *Phase do nothing, so libraries take an optional *Meter.
package progress

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// Options configure a Meter.
type Options struct {
	// Live rewrites one status line on Terminal instead of logging lines.
	Live     bool
	Terminal io.Writer
	// Log receives the lines when not Live (and the end of each phase when Live, so that
	// the outcome stays on the screen).
	Log *slog.Logger
	// Interval between "still running" lines when not Live; default 30 s. Live lines are
	// redrawn every LiveInterval (default 1 s).
	Interval, LiveInterval time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// Meter reports phases. It is safe for concurrent use.
type Meter struct {
	o Options

	mu   sync.Mutex
	line string // the live line on the terminal, "" when none is shown
	want string // the live line to show, "" when no phase runs
	// midLine: the last write through Writer did not end its line; drawing now would
	// overwrite it, so the live line waits for the newline.
	midLine bool
}

// New returns a Meter.
func New(o Options) *Meter {
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	if o.LiveInterval <= 0 {
		o.LiveInterval = time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Terminal == nil {
		o.Live = false
	}
	return &Meter{o: o}
}

// Phase is one phase of work in progress.
type Phase struct {
	m     *Meter
	name  string
	start time.Time

	mu     sync.Mutex
	detail string
	ended  bool

	stop chan struct{}
	done chan struct{}
}

// Begin starts a phase. attrs are logged with its first line. The phase must be ended
// with Done, Cached or Fail.
func (m *Meter) Begin(ctx context.Context, name string, attrs ...any) *Phase {
	if m == nil {
		return nil
	}
	p := &Phase{m: m, name: name, start: m.o.Now(), stop: make(chan struct{}), done: make(chan struct{})}
	if !m.o.Live {
		m.o.Log.InfoContext(ctx, name+": started", attrs...)
	}
	go p.tick(ctx)
	return p
}

// tick redraws the live line, or logs a "still running" line every Interval, until the
// phase ends.
func (p *Phase) tick(ctx context.Context) {
	defer close(p.done)
	every := p.m.o.Interval
	if p.m.o.Live {
		every = p.m.o.LiveInterval
		p.m.draw(p.status())
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-ctx.Done():
			return
		case <-t.C:
			if p.m.o.Live {
				p.m.draw(p.status())
			} else {
				p.m.o.Log.InfoContext(ctx, p.name+": still running", p.elapsedAttr(), "step", p.currentDetail())
			}
		}
	}
}

// Step names what the phase is doing now (e.g. "mmdebstrap", "downloading"); it shows in
// the live line and in the next "still running" line.
func (p *Phase) Step(detail string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.detail = detail
	p.mu.Unlock()
	if p.m.o.Live {
		p.m.draw(p.status())
	} else {
		p.m.o.Log.Info(p.name+": "+detail, p.elapsedAttr())
	}
}

// Done ends the phase as finished.
func (p *Phase) Done(attrs ...any) { p.end("done", attrs...) }

// Cached ends the phase saying that nothing had to be done: the result was in the cache.
func (p *Phase) Cached(attrs ...any) { p.end("cached", attrs...) }

// Fail ends the phase as failed.
func (p *Phase) Fail(err error) { p.end("failed", "err", err) }

func (p *Phase) end(outcome string, attrs ...any) {
	if p == nil {
		return
	}
	p.mu.Lock()
	if p.ended {
		p.mu.Unlock()
		return
	}
	p.ended = true
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	p.m.clear()
	p.m.o.Log.Info(p.name+": "+outcome, append([]any{p.elapsedAttr()}, attrs...)...)
}

func (p *Phase) currentDetail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.detail
}

func (p *Phase) elapsed() time.Duration { return p.m.o.Now().Sub(p.start).Round(time.Second) }

func (p *Phase) elapsedAttr() slog.Attr { return slog.String("elapsed", p.elapsed().String()) }

// status is the live line: "name: detail 12s".
func (p *Phase) status() string {
	s := p.name + ":"
	if d := p.currentDetail(); d != "" {
		s += " " + d
	}
	return fmt.Sprintf("%s %s", s, p.elapsed())
}

// draw replaces the live line with s.
func (m *Meter) draw(s string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.want = s
	if m.midLine {
		return
	}
	fmt.Fprintf(m.o.Terminal, "\r\x1b[K%s", s)
	m.line = s
}

// clear removes the live line, if one is shown.
func (m *Meter) clear() {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.want = ""
	m.clearLocked()
}

func (m *Meter) clearLocked() {
	if m.line != "" {
		fmt.Fprint(m.o.Terminal, "\r\x1b[K")
		m.line = ""
	}
}

// Writer returns w wrapped so that each write first clears the live line and then redraws
// it after, so other output never runs into it. Without a live line it returns w.
func (m *Meter) Writer(w io.Writer) io.Writer {
	if m == nil || !m.o.Live {
		return w
	}
	return &clearingWriter{m: m, w: w}
}

type clearingWriter struct {
	m *Meter
	w io.Writer
}

func (c *clearingWriter) Write(b []byte) (int, error) {
	c.m.mu.Lock()
	defer c.m.mu.Unlock()
	c.m.clearLocked()
	n, err := c.w.Write(b)
	if len(b) == 0 {
		return n, err
	}
	c.m.midLine = b[len(b)-1] != '\n'
	if c.m.want != "" && !c.m.midLine {
		fmt.Fprintf(c.m.o.Terminal, "\r\x1b[K%s", c.m.want)
		c.m.line = c.m.want
	}
	return n, err
}
