package attest_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/uuid"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// The certificate table layout (GHCB specification), written down again for the tests.
const (
	certTableEntrySize  = 24
	maxCertTableEntries = 32
)

func vcekGUIDBytes(t *testing.T) []byte {
	t.Helper()
	g := uuid.MustParse(attest.VCEKGUID)
	return g[:]
}

func TestCompleteSNPFromCertTable(t *testing.T) {
	sp, _ := simtest.SPs(t)
	rep, _ := sp.Report(simtest.Launch(), simtest.ReportData())
	ev := &attest.Evidence{TEE: attest.TEESNP, Report: rep, CertTable: sp.CertTable()}
	if err := attest.CompleteSNPFromCertTable(ev); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Certs.ARK, sp.Chain().ARK) || !bytes.Equal(ev.Certs.ASK, sp.Chain().ASK) || !bytes.Equal(ev.Certs.VCEK, sp.Chain().VCEK) || ev.Certs.VLEK != nil {
		t.Fatal("certificates not taken from the table")
	}
	// Through SimSP.Complete too.
	ev = &attest.Evidence{TEE: attest.TEESNP, Report: rep, CertTable: sp.CertTable()}
	if err := sp.Complete(ev); err != nil || ev.Certs == nil {
		t.Fatalf("Complete snp: %v", err)
	}

	// Upstream KVM hands out an empty table: the VCEK is then missing.
	err := attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESNP, Report: rep})
	simtest.WantErr(t, err, attest.ErrCertChain, "VCEK", "not implemented")

	// A VLEK-signed report needs the VLEK.
	vlek := bytes.Clone(rep)
	binary.LittleEndian.PutUint32(vlek[0x48:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VlekReportSigner}))
	err = attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESNP, Report: vlek, CertTable: sp.CertTable()})
	simtest.WantErr(t, err, attest.ErrCertChain, "VLEK")

	// SIGNER_INFO is read as go-sev-guest's abi.ParseSignerInfo reads it: reserved bits and
	// reserved key values are malformed, SIGNING_KEY 7 (no key) signs nothing.
	for name, tc := range map[string]struct {
		info     uint32
		sentinel error
	}{
		"reserved bit 5":  {0x20, attest.ErrMalformed},
		"reserved bit 31": {0x80000000, attest.ErrMalformed},
		"key 2":           {2 << 2, attest.ErrMalformed},
		"key 6":           {6 << 2, attest.ErrMalformed},
		"key 7 (none)":    {7 << 2, attest.ErrCertChain},
	} {
		r := bytes.Clone(rep)
		binary.LittleEndian.PutUint32(r[0x48:], tc.info)
		err := attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESNP, Report: r, CertTable: sp.CertTable()})
		if !errors.Is(err, tc.sentinel) {
			t.Errorf("SIGNER_INFO %s: got %v, want %v", name, err, tc.sentinel)
		}
	}
	// The mask-chip-key and author-key bits are allowed.
	masked := bytes.Clone(rep)
	binary.LittleEndian.PutUint32(masked[0x48:], 0x3)
	if err := attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESNP, Report: masked, CertTable: sp.CertTable()}); err != nil {
		t.Errorf("SIGNER_INFO 0x3 (VCEK, MASK_CHIP_KEY, AUTHOR_KEY_EN): %v", err)
	}

	err = attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESim, Report: rep})
	simtest.WantErr(t, err, attest.ErrUnsupported)
	err = attest.CompleteSNPFromCertTable(&attest.Evidence{TEE: attest.TEESNP, Report: rep, CertTable: sp.CertTable()[:30]})
	simtest.WantErr(t, err, attest.ErrMalformed)
}

func TestParseCertTable(t *testing.T) {
	sp, _ := simtest.SPs(t)
	tab, err := attest.ParseCertTable(sp.CertTable())
	if err != nil || len(tab) != 3 || !bytes.Equal(tab[attest.VCEKGUID], sp.Chain().VCEK) {
		t.Fatalf("parse: %v, %d entries", err, len(tab))
	}
	if tab, err := attest.ParseCertTable(nil); err != nil || len(tab) != 0 {
		t.Fatalf("empty: %v", err)
	}
	entry := func(guid []byte, off, length uint32) []byte {
		e := append(bytes.Clone(guid), make([]byte, 8)...)
		binary.LittleEndian.PutUint32(e[16:], off)
		binary.LittleEndian.PutUint32(e[20:], length)
		return e
	}
	g := vcekGUIDBytes(t)
	zero := make([]byte, certTableEntrySize)
	for name, tc := range map[string]struct {
		in   []byte
		want string
	}{
		"no terminator": {entry(g, 24, 0), "terminating"},
		"wrap":          {append(append(entry(g, 0xFFFFFFF0, 0x20), zero...), make([]byte, 64)...), "outside"},
		"into header":   {append(append(entry(g, 0, 8), zero...), make([]byte, 64)...), "outside"},
		"past end":      {append(append(entry(g, 48, 100), zero...), make([]byte, 64)...), "outside"},
		"duplicate":     {append(append(append(entry(g, 72, 1), entry(g, 72, 1)...), zero...), 1), "twice"},
		"too many":      {bytes.Repeat(entry(g, 0, 0), maxCertTableEntries+2), "more than"},
		"oversize":      {make([]byte, attest.MaxCertTableSize+1), "limit"},
	} {
		_, err := attest.ParseCertTable(tc.in)
		if !errors.Is(err, attest.ErrMalformed) || !bytes.Contains([]byte(err.Error()), []byte(tc.want)) {
			t.Errorf("%s: got %v, want ErrMalformed mentioning %q", name, err, tc.want)
		}
	}
}
