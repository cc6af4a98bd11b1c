package main

import (
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// isTerminal says whether w is a terminal (a terminal keeps the guest console's colours
// and cursor movement; a log file or CI log gets them as noise).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// escapeStripper passes text through without terminal escape sequences: CSI (ESC [ ...
// final byte), OSC (ESC ] ... BEL or ESC \), character set selections (ESC ( B and the
// like) and other two-byte ESC sequences. A sequence may span Write calls.
type escapeStripper struct {
	w     io.Writer
	state stripState
	buf   []byte
}

type stripState int

const (
	plain   stripState = iota
	esc                // after ESC
	csi                // after ESC [
	osc                // after ESC ]
	oscEsc             // ESC inside an OSC: ESC \ ends it
	charset            // after ESC ( ) * + : one more byte
)

func newEscapeStripper(w io.Writer) *escapeStripper { return &escapeStripper{w: w} }

// Write reports len(p) when the stripped text was written, as the guest console expects of
// an io.Writer that consumes all of its input.
func (s *escapeStripper) Write(p []byte) (int, error) {
	s.buf = s.buf[:0]
	for _, c := range p {
		s.step(c)
	}
	if len(s.buf) > 0 {
		if _, err := s.w.Write(s.buf); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (s *escapeStripper) step(c byte) {
	switch s.state {
	case plain:
		if c == 0x1b {
			s.state = esc
		} else {
			s.buf = append(s.buf, c)
		}
	case esc:
		switch {
		case c == '[':
			s.state = csi
		case c == ']':
			s.state = osc
		case c == '(' || c == ')' || c == '*' || c == '+':
			s.state = charset
		default: // a two-byte sequence: ESC 7, ESC M, ESC c, ...
			s.state = plain
		}
	case csi:
		if c >= 0x40 && c <= 0x7e { // the final byte; parameters and intermediates are skipped
			s.state = plain
		}
	case osc:
		switch c {
		case 0x07:
			s.state = plain
		case 0x1b:
			s.state = oscEsc
		}
	case oscEsc:
		if c == '\\' {
			s.state = plain
		} else {
			s.state = osc
		}
	case charset:
		s.state = plain
	}
}
