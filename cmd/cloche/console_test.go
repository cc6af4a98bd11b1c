package main

import (
	"bytes"
	"os"
	"testing"
)

// TestEscapeStripper: the escape codes a Linux and systemd-style console emits are removed,
// text around them is kept byte for byte, and a sequence split across writes is still
// removed (the console arrives in arbitrary chunks).
func TestEscapeStripper(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"plain text", "make: Nothing to be done.\r\n", "make: Nothing to be done.\r\n"},
		{"colour", "\x1b[0;32mOK\x1b[0m done\n", "OK done\n"},
		{"cursor and erase", "\x1b[2J\x1b[H\x1b[?25lboot\x1b[K\n", "boot\n"},
		{"window title (OSC, BEL)", "\x1b]0;guest\x07hello\n", "hello\n"},
		{"hyperlink (OSC, ST)", "\x1b]8;;http://x\x1b\\link\x1b]8;;\x1b\\\n", "link\n"},
		{"charset and two-byte", "\x1b(Bx\x1b7y\x1b8z\n", "xyz\n"},
		{"UTF-8 kept", "héllo ✓\n", "héllo ✓\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var whole bytes.Buffer
			n, err := newEscapeStripper(&whole).Write([]byte(tc.in))
			if err != nil || n != len(tc.in) {
				t.Fatalf("Write = %d, %v; want %d, nil", n, err, len(tc.in))
			}
			if whole.String() != tc.want {
				t.Errorf("in one write: %q, want %q", whole.String(), tc.want)
			}
			var split bytes.Buffer
			s := newEscapeStripper(&split)
			for i := 0; i < len(tc.in); i++ {
				s.Write([]byte{tc.in[i]})
			}
			if split.String() != tc.want {
				t.Errorf("byte by byte: %q, want %q", split.String(), tc.want)
			}
		})
	}
}

// TestConsoleWriter: the console is filtered for a pipe or buffer, passed through untouched
// to a terminal, and dropped with --quiet.
func TestConsoleWriter(t *testing.T) {
	var buf bytes.Buffer
	consoleWriter(&buf, false).Write([]byte("\x1b[1mbold\x1b[0m\n"))
	if buf.String() != "bold\n" {
		t.Errorf("to a buffer: %q, want the escape codes stripped", buf.String())
	}
	buf.Reset()
	consoleWriter(&buf, true).Write([]byte("x"))
	if buf.Len() != 0 {
		t.Errorf("--quiet wrote %q", buf.String())
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if isTerminal(w) {
		t.Error("a pipe counts as a terminal")
	}
	if tty, err := os.OpenFile("/dev/ptmx", os.O_RDWR, 0); err == nil {
		defer tty.Close()
		if !isTerminal(tty) {
			t.Error("a pseudo-terminal does not count as a terminal")
		}
		if consoleWriter(tty, false) != tty {
			t.Error("the console to a terminal is filtered")
		}
	}
}
