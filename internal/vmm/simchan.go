package vmm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// serviceStopLimit bounds the wait for SimService to return once the VM is gone.
const serviceStopLimit = 5 * time.Second

// simChannel is the host end of the simulated secure processor: a unix socket that QEMU's
// chardev connects to (QEMU is the client), carrying the guest's virtio-serial port.
type simChannel struct {
	path string
	ln   *net.UnixListener

	mu     sync.Mutex
	conn   *net.UnixConn
	closed bool
	done   chan struct{} // closed when the serving goroutine has ended; nil if never served
	err    error         // the service's failure, reported by close
}

// listenSim listens on path before QEMU starts, so that QEMU connects to us and nobody else
// can take the name first.
func listenSim(path string) (*simChannel, error) {
	// A socket left by a crashed earlier run in the same RunDir would make Listen fail; remove
	// it, but never anything that is not a socket.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("vmm: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("vmm: remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vmm: listen for the simulated TEE channel: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	return &simChannel{path: path, ln: ln}, nil
}

// serve accepts exactly one connection, from the QEMU process group qemuPID, within
// acceptLimit and runs svc on it in a goroutine. The returned channel yields an error if the channel
// could not be set up while the VM runs (Run then stops the VM: a sim guest without its
// secure processor cannot do anything useful). A failure of svc itself is not sent there:
// the connection is closed, the guest sees EOF and reports the failure itself before it
// powers off, and close returns the error.
func (c *simChannel) serve(ctx context.Context, qemuPID int, acceptLimit time.Duration,
	svc func(context.Context, io.ReadWriter) error, log *slog.Logger) <-chan error {
	failed := make(chan error, 1)
	c.mu.Lock()
	c.done = make(chan struct{})
	c.mu.Unlock()
	go func() {
		defer close(c.done)
		_ = c.ln.SetDeadline(time.Now().Add(acceptLimit))
		conn, err := c.ln.AcceptUnix()
		// Exactly one connection: nobody else gets to talk to the service.
		_ = c.ln.Close()
		if err != nil {
			if !c.isClosed() && ctx.Err() == nil {
				failed <- fmt.Errorf("%w: QEMU did not connect to %s within %s: %w", ErrSimService, c.path, acceptLimit, err)
			}
			return
		}
		// Only QEMU (or, when Config.QEMU is a wrapper, a process in QEMU's process group)
		// may be the guest's secure processor peer.
		pid, err := peerPID(conn)
		pgid := -1
		if err == nil {
			pgid, err = unix.Getpgid(pid)
		}
		if err != nil || pgid != qemuPID {
			conn.Close()
			failed <- fmt.Errorf("%w: connection on %s is from pid %d in process group %d (%v), expected QEMU's group %d",
				ErrSimService, c.path, pid, pgid, err, qemuPID)
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			conn.Close()
			return
		}
		c.conn = conn
		c.mu.Unlock()

		err = svc(ctx, conn)
		conn.Close()
		if err != nil && !channelEnded(ctx, err) {
			log.Error("vmm: simulated secure processor failed; closing the guest's channel", "err", err)
			c.mu.Lock()
			c.err = fmt.Errorf("%w: %w", ErrSimService, err)
			c.mu.Unlock()
		}
	}()
	return failed
}

func (c *simChannel) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// close stops accepting, closes the connection, waits for the serving goroutine (the caller
// has cancelled its context first) and returns the service's failure, if any. Idempotent.
func (c *simChannel) close() error {
	c.mu.Lock()
	if c.closed {
		defer c.mu.Unlock()
		return c.err
	}
	c.closed = true
	if c.conn != nil {
		c.conn.Close()
	}
	done := c.done
	c.mu.Unlock()
	_ = c.ln.Close() // also removes the socket file
	if done != nil {
		select {
		case <-done:
		case <-time.After(serviceStopLimit):
			// A service that ignores both its context and the closed connection must not
			// hang Run; its goroutine is lost, which the error says.
			c.mu.Lock()
			defer c.mu.Unlock()
			c.err = fmt.Errorf("%w: SimService did not return within %s after the VM ended", ErrSimService, serviceStopLimit)
			return c.err
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// channelEnded tells the normal ends of the channel (EOF when QEMU exits, our own close or
// cancel) from a failure of the service.
func channelEnded(ctx context.Context, err error) bool {
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return true
	case ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded)):
		return true
	}
	return false
}

// peerPID returns the pid of the process at the other end of conn (SO_PEERCRED).
func peerPID(conn *net.UnixConn) (int, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, credErr
	}
	return int(cred.Pid), nil
}
