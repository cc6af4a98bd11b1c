package guest

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The layout constants must agree with the kernel's structs as cgo saw them for x/sys.
func TestDMStructLayout(t *testing.T) {
	var io unix.DmIoctl
	var spec unix.DmTargetSpec
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(dm_ioctl)", dmIoctlSize, unsafe.Sizeof(io)},
		{"sizeof(dm_ioctl) constant", dmIoctlSize, unix.SizeofDmIoctl},
		{"dm_ioctl.version", dmOffVersion, unsafe.Offsetof(io.Version)},
		{"dm_ioctl.data_size", dmOffDataSize, unsafe.Offsetof(io.Data_size)},
		{"dm_ioctl.data_start", dmOffDataStart, unsafe.Offsetof(io.Data_start)},
		{"dm_ioctl.target_count", dmOffTargetCount, unsafe.Offsetof(io.Target_count)},
		{"dm_ioctl.open_count", dmOffOpenCount, unsafe.Offsetof(io.Open_count)},
		{"dm_ioctl.flags", dmOffFlags, unsafe.Offsetof(io.Flags)},
		{"dm_ioctl.event_nr", dmOffEventNr, unsafe.Offsetof(io.Event_nr)},
		{"dm_ioctl.dev", dmOffDev, unsafe.Offsetof(io.Dev)},
		{"dm_ioctl.name", dmOffName, unsafe.Offsetof(io.Name)},
		{"dm_ioctl.uuid", dmOffUUID, unsafe.Offsetof(io.Uuid)},
		{"len(name)", dmNameLen, unsafe.Sizeof(io.Name)},
		{"sizeof(dm_target_spec)", dmTargetSpecSize, unsafe.Sizeof(spec)},
		{"sizeof(dm_target_spec) constant", dmTargetSpecSize, unix.SizeofDmTargetSpec},
		{"dm_target_spec.sector_start", dmSpecOffSectorStart, unsafe.Offsetof(spec.Sector_start)},
		{"dm_target_spec.length", dmSpecOffLength, unsafe.Offsetof(spec.Length)},
		{"dm_target_spec.status", dmSpecOffStatus, unsafe.Offsetof(spec.Status)},
		{"dm_target_spec.next", dmSpecOffNext, unsafe.Offsetof(spec.Next)},
		{"dm_target_spec.target_type", dmSpecOffTargetType, unsafe.Offsetof(spec.Target_type)},
		{"len(target_type)", dmTypeNameLen, unsafe.Sizeof(spec.Target_type)},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: cloche uses %d, the kernel struct has %d", c.name, c.got, c.want)
		}
	}
	if dmIoctlSize != 312 || dmTargetSpecSize != 40 {
		t.Errorf("dm_ioctl %d bytes, dm_target_spec %d; the 4.x ABI has 312 and 40", dmIoctlSize, dmTargetSpecSize)
	}
}

func TestVerityTableLoadEncoding(t *testing.T) {
	p := VerityParams{
		Dev: unix.Mkdev(253, 16), DataBlocks: 1000, HashOffset: 1000 * 4096,
		RootHash: strings.Repeat("ab", 32), Salt: "00ff",
	}
	target, err := verityTable(p)
	if err != nil {
		t.Fatal(err)
	}
	wantParams := "1 253:16 253:16 4096 4096 1000 1000 sha256 " + strings.Repeat("ab", 32) + " 00ff"
	if target.Params != wantParams || target.Length != 8000 || target.Type != "verity" {
		t.Fatalf("target %+v, expected params %q and 8000 sectors", target, wantParams)
	}
	buf, err := encodeDMIoctl("cloche-toolchain", unix.DM_READONLY_FLAG, []dmTarget{target}, 0)
	if err != nil {
		t.Fatal(err)
	}
	ne := binary.NativeEndian
	specLen := align8(40 + len(wantParams) + 1)
	if len(buf) != 312+specLen {
		t.Fatalf("buffer is %d bytes, expected %d", len(buf), 312+specLen)
	}
	if v := [3]uint32{ne.Uint32(buf[0:]), ne.Uint32(buf[4:]), ne.Uint32(buf[8:])}; v != [3]uint32{4, 0, 0} {
		t.Errorf("version %v", v)
	}
	if ne.Uint32(buf[12:]) != uint32(len(buf)) || ne.Uint32(buf[16:]) != 312 || ne.Uint32(buf[20:]) != 1 || ne.Uint32(buf[28:]) != unix.DM_READONLY_FLAG {
		t.Errorf("header fields data_size=%d data_start=%d target_count=%d flags=%#x",
			ne.Uint32(buf[12:]), ne.Uint32(buf[16:]), ne.Uint32(buf[20:]), ne.Uint32(buf[28:]))
	}
	if cString(buf[48:176]) != "cloche-toolchain" {
		t.Errorf("name %q", cString(buf[48:176]))
	}
	spec := buf[312:]
	if ne.Uint64(spec[0:]) != 0 || ne.Uint64(spec[8:]) != 8000 || ne.Uint32(spec[20:]) != uint32(specLen) ||
		cString(spec[24:40]) != "verity" || cString(spec[40:]) != wantParams || specLen%8 != 0 {
		t.Errorf("target spec %x", spec[:40])
	}
}

func TestDMNameAndParamChecks(t *testing.T) {
	for _, name := range []string{"", "a/b", strings.Repeat("x", 128), "a\x00b"} {
		if _, err := encodeDMIoctl(name, 0, nil, 0); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	if _, err := encodeDMIoctl("ok", 0, []dmTarget{{Type: "verity", Params: "a\x00"}}, 0); err == nil {
		t.Error("NUL in parameters accepted")
	}
	if _, err := encodeDMIoctl("ok", 0, []dmTarget{{Type: strings.Repeat("v", 16)}}, 0); err == nil {
		t.Error("16-byte target type accepted (no room for NUL)")
	}
	base := VerityParams{Dev: 1, DataBlocks: 8, HashOffset: 8 * 4096, RootHash: strings.Repeat("0", 64)}
	bad := map[string]func(*VerityParams){
		"hash offset not at data end": func(p *VerityParams) { p.HashOffset = 4096 },
		"zero data blocks":            func(p *VerityParams) { p.DataBlocks, p.HashOffset = 0, 0 },
		"short root hash":             func(p *VerityParams) { p.RootHash = "00" },
		"upper-case root hash":        func(p *VerityParams) { p.RootHash = strings.Repeat("A", 64) },
		"odd salt":                    func(p *VerityParams) { p.Salt = "abc" },
		"salt with a space":           func(p *VerityParams) { p.Salt = "ab cd" },
	}
	for name, mutate := range bad {
		p := base
		mutate(&p)
		if _, err := verityTable(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if tgt, err := verityTable(base); err != nil || !strings.HasSuffix(tgt.Params, " -") {
		t.Errorf("empty salt: %v, params %q (expected \"-\")", err, tgt.Params)
	}
}

// statusReply builds a DM_TABLE_STATUS answer as the kernel lays it out.
func statusReply(targets ...dmTarget) []byte {
	buf := make([]byte, 1024)
	ne := binary.NativeEndian
	ne.PutUint32(buf[dmOffDataStart:], dmIoctlSize)
	ne.PutUint32(buf[dmOffTargetCount:], uint32(len(targets)))
	off := 0
	for _, t := range targets {
		spec := buf[dmIoctlSize+off:]
		ne.PutUint64(spec[8:], t.Length)
		copy(spec[24:], t.Type)
		copy(spec[40:], t.Params)
		off = align8(off + 40 + len(t.Params) + 1)
		ne.PutUint32(spec[20:], uint32(off))
	}
	ne.PutUint32(buf[dmOffDataSize:], uint32(dmIoctlSize+off))
	return buf
}

func TestVerityStatusParsing(t *testing.T) {
	for status, want := range map[string]error{"V": nil, "C": ErrVerityCorrupted, "C 3": ErrVerityCorrupted} {
		r, err := decodeDMReply(statusReply(dmTarget{Length: 8, Type: "verity", Params: status}), true)
		if err != nil {
			t.Fatal(err)
		}
		if got := parseVerityStatus(r.Targets); !errors.Is(got, want) || (want == nil) != (got == nil) {
			t.Errorf("status %q: %v, expected %v", status, got, want)
		}
	}
	bad := map[string][]byte{
		"unknown status":   statusReply(dmTarget{Type: "verity", Params: "X"}),
		"empty status":     statusReply(dmTarget{Type: "verity", Params: ""}),
		"wrong target":     statusReply(dmTarget{Type: "linear", Params: "V"}),
		"two targets":      statusReply(dmTarget{Type: "verity", Params: "V"}, dmTarget{Type: "verity", Params: "V"}),
		"no target at all": statusReply(),
	}
	for name, buf := range bad {
		r, err := decodeDMReply(buf, true)
		if err == nil {
			err = parseVerityStatus(r.Targets)
		}
		if err == nil || errors.Is(err, ErrVerityCorrupted) {
			t.Errorf("%s: %v, expected a status error", name, err)
		}
	}
}

func TestDecodeDMReplyRejectsMalformed(t *testing.T) {
	ne := binary.NativeEndian
	short := make([]byte, 100)
	if _, err := decodeDMReply(short, true); err == nil {
		t.Error("short reply accepted")
	}
	full := statusReply(dmTarget{Type: "verity", Params: "V"})
	ne.PutUint32(full[dmOffFlags:], unix.DM_BUFFER_FULL_FLAG)
	if _, err := decodeDMReply(full, true); err == nil {
		t.Error("reply with DM_BUFFER_FULL_FLAG accepted")
	}
	outside := statusReply(dmTarget{Type: "verity", Params: "V"})
	ne.PutUint32(outside[dmOffDataStart:], 5000)
	if _, err := decodeDMReply(outside, true); err == nil {
		t.Error("target outside the reply accepted")
	}
	unterminated := statusReply(dmTarget{Type: "verity", Params: "V"})
	ne.PutUint32(unterminated[dmOffDataSize:], dmIoctlSize+41) // cuts the NUL off
	if _, err := decodeDMReply(unterminated, true); err == nil {
		t.Error("unterminated status string accepted")
	}
	backwards := statusReply(dmTarget{Type: "verity", Params: "V"}, dmTarget{Type: "verity", Params: "V"})
	ne.PutUint32(backwards[dmIoctlSize+20:], 0)
	if _, err := decodeDMReply(backwards, true); err == nil {
		t.Error("non-advancing next offset accepted")
	}
	many := statusReply()
	ne.PutUint32(many[dmOffTargetCount:], 1000)
	if _, err := decodeDMReply(many, true); err == nil {
		t.Error("1000 targets accepted")
	}
}
