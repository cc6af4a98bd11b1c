package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peerCred reads the connecting process's credentials from the kernel (SO_PEERCRED): they
// are those of the process at connect(2) time and cannot be forged by the peer.
func peerCred(c net.Conn) (Submitter, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return Submitter{}, fmt.Errorf("connection is a %T, expected a unix socket", c)
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return Submitter{}, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var groups []int
	var credErr, groupsErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		groups, groupsErr = peerGroups(int(fd))
	}); err != nil {
		return Submitter{}, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return Submitter{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	if groupsErr != nil {
		return Submitter{}, fmt.Errorf("peer credentials: SO_PEERGROUPS: %w", groupsErr)
	}
	return Submitter{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid), Groups: groups}, nil
}

// peerGroups reads the peer's supplementary groups with SO_PEERGROUPS. Like SO_PEERCRED,
// the kernel copies them from the connecting process at connect(2), so the peer cannot
// forge them. The alternatives can be spoofed or are wrong: /proc/PID/status, found
// through SO_PEERCRED's pid, is read later, when the peer may have exited and its pid been
// reused by a more privileged process (or the peer may have exec'd something setgid);
// getgrouplist(uid) reports the group database, not the process: it grants groups a
// process dropped (a sandbox's setgroups) and depends on NSS answering.
func peerGroups(fd int) ([]int, error) {
	buf := make([]uint32, 64)
	for {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		if errno == unix.ERANGE && int(n/4) > len(buf) {
			buf = make([]uint32, n/4) // the kernel said how much it needs
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		groups := make([]int, n/4)
		for i := range groups {
			groups[i] = int(buf[i])
		}
		return groups, nil
	}
}

// credKey carries a connection's peer credentials (or why they are missing) in the
// request context.
type credKey struct{}

type credResult struct {
	peer Submitter
	err  error
}

func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, credKey{}, pc.cred)
	}
	p, err := peerCred(c)
	return context.WithValue(ctx, credKey{}, credResult{p, err})
}

// uidListener caps the connections each uid holds open, so one user's idle or stalled
// connections cannot use up the agent's file descriptors and lock others out. A
// connection over the cap is answered 429 at once and closed.
type uidListener struct {
	net.Listener
	max int
	log *slog.Logger

	mu   sync.Mutex
	open map[int]int // by uid; connections without credentials count under -1
}

func newUIDListener(l net.Listener, max int, log *slog.Logger) *uidListener {
	return &uidListener{Listener: l, max: max, log: log, open: map[int]int{}}
}

// peerConn is an accepted connection with its peer's credentials, read once.
type peerConn struct {
	net.Conn
	cred    credResult
	release sync.Once
	l       *uidListener
}

func (c *peerConn) Close() error {
	c.release.Do(func() { c.l.done(c.cred.uid()) })
	return c.Conn.Close()
}

func (r credResult) uid() int {
	if r.err != nil {
		return -1
	}
	return r.peer.UID
}

// Accept returns the next connection within its uid's cap.
func (l *uidListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		p, perr := peerCred(c)
		cred := credResult{p, perr}
		if n, ok := l.take(cred.uid()); !ok {
			l.log.Debug("refused a connection over its uid's cap", "uid", cred.uid(), "open", n)
			refuseConn(c, fmt.Sprintf("agent busy: uid %d already has %d connections open to the agent, the limit per user is %d; close some and retry", cred.uid(), n, l.max))
			continue
		}
		return &peerConn{Conn: c, cred: cred, l: l}, nil
	}
}

func (l *uidListener) take(uid int) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.open[uid]
	if n >= l.max {
		return n, false
	}
	l.open[uid] = n + 1
	return n, true
}

func (l *uidListener) done(uid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.open[uid]--; l.open[uid] <= 0 {
		delete(l.open, uid)
	}
}

// refuseConn answers a connection the agent will not serve with a 429 and closes it,
// without waiting for the request (a full socket buffer must not hold up Accept).
func refuseConn(c net.Conn, msg string) {
	body, _ := json.Marshal(&APIError{Code: CodeBusy, Message: msg})
	c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
	fmt.Fprintf(c, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	c.Close()
}

// allowedGroup says whether the peer's primary or a supplementary group is allowed.
func (a *Agent) allowedGroup(p Submitter) bool {
	return slices.Contains(a.cfg.AllowedGIDs, p.GID) || slices.ContainsFunc(p.Groups, func(g int) bool { return slices.Contains(a.cfg.AllowedGIDs, g) })
}

// authorize says whether the request's peer may use the agent, with an error that names
// the peer and what would be accepted.
func (a *Agent) authorize(ctx context.Context) (Submitter, error) {
	cr, ok := ctx.Value(credKey{}).(credResult)
	if !ok {
		return Submitter{}, errors.New("no peer credentials on this connection")
	}
	if cr.err != nil {
		return Submitter{}, cr.err
	}
	p := cr.peer
	if p.UID == a.uid || slices.Contains(a.cfg.AllowedUIDs, p.UID) || a.allowedGroup(p) {
		return p, nil
	}
	return p, fmt.Errorf("uid %d (gid %d, groups %v, pid %d) is not allowed to use this cloche agent; allowed: uid %d (the agent's own), uids %v, gids %v (set allowedUids/allowedGids in the agent's configuration; a user added to a group must log in again, or its service restart, for its processes to hold the group)",
		p.UID, p.GID, p.Groups, p.PID, a.uid, a.cfg.AllowedUIDs, a.cfg.AllowedGIDs)
}
