package guest

import (
	"sync"
	"time"
)

// watchdog calls fire once, limit after it was (re)armed, unless re-armed first. The guest
// uses it as the hard deadline that guarantees the VM powers off even if a step hangs.
type watchdog struct {
	mu    sync.Mutex
	timer *time.Timer
	fire  func(limit time.Duration)
}

func newWatchdog(limit time.Duration, fire func(limit time.Duration)) *watchdog {
	w := &watchdog{fire: fire}
	w.Reset(limit)
	return w
}

// Reset re-arms the watchdog to fire limit from now.
func (w *watchdog) Reset(limit time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
	w.timer = time.AfterFunc(limit, func() { w.fire(limit) })
}

// Stop disarms the watchdog.
func (w *watchdog) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.timer != nil {
		w.timer.Stop()
	}
}
