package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"

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
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Submitter{}, fmt.Errorf("peer credentials: %w", err)
	}
	if credErr != nil {
		return Submitter{}, fmt.Errorf("peer credentials: SO_PEERCRED: %w", credErr)
	}
	return Submitter{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid)}, nil
}

// credKey carries a connection's peer credentials (or why they are missing) in the
// request context.
type credKey struct{}

type credResult struct {
	peer Submitter
	err  error
}

func withPeerCred(ctx context.Context, c net.Conn) context.Context {
	p, err := peerCred(c)
	return context.WithValue(ctx, credKey{}, credResult{p, err})
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
	if p.UID == a.uid || slices.Contains(a.cfg.AllowedUIDs, p.UID) || slices.Contains(a.cfg.AllowedGIDs, p.GID) {
		return p, nil
	}
	return p, fmt.Errorf("uid %d (gid %d, pid %d) is not allowed to use this cloche agent; allowed: uid %d (the agent's own), uids %v, gids %v (set allowedUids/allowedGids in the agent's configuration)",
		p.UID, p.GID, p.PID, a.uid, a.cfg.AllowedUIDs, a.cfg.AllowedGIDs)
}
