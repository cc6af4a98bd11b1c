package vmm

import (
	"bytes"
	"sync"
)

// tailBuffer keeps the last max bytes written to it: QEMU's stderr, kept for error messages
// without letting a chatty QEMU grow memory without bound. It also watches for a marker
// (QEMU's report of a KVM internal error, after which QEMU stops the guest and waits forever)
// and closes tripped the first time the marker appears.
type tailBuffer struct {
	mu      sync.Mutex
	buf     []byte
	max     int
	marker  []byte
	seen    bool
	tripped chan struct{}
}

func newTailBuffer(max int, marker string) *tailBuffer {
	return &tailBuffer{max: max, marker: []byte(marker), tripped: make(chan struct{})}
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.seen && len(t.marker) > 0 {
		// Search the marker across the boundary between the old tail and p.
		keep := min(len(t.marker)-1, len(t.buf))
		window := append(append([]byte(nil), t.buf[len(t.buf)-keep:]...), p...)
		if bytes.Contains(window, t.marker) {
			t.seen = true
			close(t.tripped)
		}
	}
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

// String returns the kept tail, trimmed of surrounding white space.
func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(bytes.TrimSpace(t.buf))
}
