package verifier

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtestdata "github.com/google/go-sev-guest/verify/testdata"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/attest/simtest"
)

// simOpts opts in to simulated evidence trusting sp's root as read from its RootPath, and
// expects exactly testLaunch/testReportData.
func simOpts(t *testing.T, sp *simsp.SP) Options {
	t.Helper()
	roots, err := LoadCertificatePEM(sp.RootPath())
	if err != nil {
		t.Fatal(err)
	}
	l, rd := simtest.Launch(), simtest.ReportData()
	return Options{
		AllowSimulated:       true,
		SimRoots:             roots,
		ExpectedMeasurements: [][]byte{bytes.Repeat([]byte{7}, 48), l.Measurement[:]},
		ExpectedHostData:     l.HostData[:],
		ExpectedReportData:   rd[:],
	}
}

// signedVariant signs a sim report after edit changed its unsigned form.
func signedVariant(t *testing.T, sp *simsp.SP, edit func(r []byte)) *attest.Evidence {
	t.Helper()
	r, err := sp.Report(simtest.Launch(), simtest.ReportData())
	if err != nil {
		t.Fatal(err)
	}
	edit(r)
	if err := sp.Resign(r); err != nil {
		t.Fatal(err)
	}
	return &attest.Evidence{TEE: attest.TEESim, Report: r, Certs: sp.Chain()}
}

func TestVerifySimPasses(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	claims, err := Verify(ev, simOpts(t, sp))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	l, rd := simtest.Launch(), simtest.ReportData()
	if claims.TEE != attest.TEESim || !claims.Simulated {
		t.Errorf("claims TEE %q simulated %v, want sim, true", claims.TEE, claims.Simulated)
	}
	if !bytes.Equal(claims.Measurement, l.Measurement[:]) || !bytes.Equal(claims.HostData, l.HostData[:]) || !bytes.Equal(claims.ReportData, rd[:]) {
		t.Errorf("claims bindings differ from the launch: %+v", claims)
	}
	if len(claims.Warnings) != 0 {
		t.Errorf("sim evidence warnings %q: nobody publishes CRLs for local sim roots", claims.Warnings)
	}
	if claims.Policy != 0x30000 || claims.VMPL != 0 {
		t.Errorf("claims policy 0x%x VMPL %d, want 0x30000, 0", claims.Policy, claims.VMPL)
	}
	vcek, err := x509.ParseCertificate(sp.Chain().VCEK)
	if err != nil {
		t.Fatal(err)
	}
	exts, err := kds.VcekCertificateExtensions(vcek)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(claims.ChipID, exts.HWID) || claims.ReportedTCB != uint64(exts.TCBVersion) {
		t.Errorf("claims chip id / TCB differ from the VCEK's")
	}
	// The report carries the sim markers and the Milan FMS.
	r := ev.Report
	if !bytes.Equal(r[0x10:0x20], []byte("CLOCHE-SIMULATED")) || !bytes.Equal(r[0x20:0x30], []byte("CLOCHE-SIM-IMAGE")) {
		t.Errorf("FAMILY_ID/IMAGE_ID are %q/%q", r[0x10:0x20], r[0x20:0x30])
	}
	if binary.LittleEndian.Uint32(r) != 3 || abi.FmsToCpuid1Eax(r[0x188], r[0x189], r[0x18A]) != 0x00a00f10 {
		t.Errorf("VERSION %d, FMS %x %x %x", binary.LittleEndian.Uint32(r), r[0x188], r[0x189], r[0x18A])
	}

	// Nothing expected: bindings are reported, not checked.
	opts := simOpts(t, sp)
	opts.ExpectedMeasurements, opts.ExpectedHostData, opts.ExpectedReportData = nil, nil, nil
	if _, err := Verify(ev, opts); err != nil {
		t.Fatalf("Verify without expectations: %v", err)
	}

	// The certificate table alone (as the guest received it) is enough too.
	ev2 := &attest.Evidence{TEE: attest.TEESim, Report: ev.Report, CertTable: sp.CertTable()}
	if _, err := Verify(ev2, simOpts(t, sp)); err != nil {
		t.Fatalf("Verify from the certificate table: %v", err)
	}
}

func TestVerifySimRejectedWithoutOptIn(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	opts := simOpts(t, sp)
	opts.AllowSimulated = false
	_, err := Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrSimulatedNotAllowed, "SIMULATED", hex.EncodeToString(attest.SimFamilyID[:]))

	opts = simOpts(t, sp)
	opts.SimRoots = nil
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrSimulatedNotAllowed, "no trusted simulated root")
}

func TestVerifySimWrongRoot(t *testing.T) {
	sp, other := simtest.SPs(t)
	if sp.Root().Equal(other.Root()) {
		t.Fatal("two state directories produced the same root")
	}
	opts := simOpts(t, sp)
	opts.SimRoots = []*x509.Certificate{other.Root()}
	_, err := Verify(simtest.Evidence(t, sp), opts)
	simtest.WantErr(t, err, attest.ErrCertChain, "simulated root")

	// The other SP's ASK in the evidence does not help: it chains to the other root only.
	ev := simtest.Evidence(t, sp)
	ev.Certs.ASK = other.Chain().ASK
	_, err = Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrCertChain)
}

func TestVerifySimFlippedByte(t *testing.T) {
	sp, _ := simtest.SPs(t)
	for _, off := range []int{0x090, 0x0C0, 0x050, 0x2A0} { // MEASUREMENT, HOST_DATA, REPORT_DATA, signature R
		ev := simtest.Evidence(t, sp)
		ev.Report[off] ^= 0x01
		opts := simOpts(t, sp)
		opts.ExpectedMeasurements, opts.ExpectedHostData, opts.ExpectedReportData = nil, nil, nil
		_, err := Verify(ev, opts)
		simtest.WantErr(t, err, attest.ErrSignature, "signature")
	}
}

func TestVerifySimBindingMismatch(t *testing.T) {
	sp, _ := simtest.SPs(t)
	l, rd := simtest.Launch(), simtest.ReportData()
	ev := simtest.Evidence(t, sp)

	opts := simOpts(t, sp)
	other := bytes.Repeat([]byte{0xAB}, 48)
	opts.ExpectedMeasurements = [][]byte{other}
	_, err := Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrMeasurement, hex.EncodeToString(l.Measurement[:]), hex.EncodeToString(other))

	opts = simOpts(t, sp)
	opts.ExpectedHostData = bytes.Repeat([]byte{0xCD}, 32)
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrHostData, hex.EncodeToString(l.HostData[:]), hex.EncodeToString(opts.ExpectedHostData))

	opts = simOpts(t, sp)
	opts.ExpectedHostData = l.HostData[:16]
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrHostData, "16 bytes")

	opts = simOpts(t, sp)
	opts.ExpectedReportData = bytes.Repeat([]byte{0xEF}, 64)
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrReportData, hex.EncodeToString(rd[:]), hex.EncodeToString(opts.ExpectedReportData))
}

func TestVerifySimDebugPolicy(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := signedVariant(t, sp, func(r []byte) {
		binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, Debug: true}))
	})
	_, err := Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrPolicy, "debug", "POLICY 0xb0000")
}

func TestVerifySimMigrationAgentPolicy(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := signedVariant(t, sp, func(r []byte) {
		binary.LittleEndian.PutUint64(r[0x08:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true, MigrateMA: true}))
	})
	_, err := Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrPolicy, "migration agent")
}

func TestVerifySimVMPL1(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := signedVariant(t, sp, func(r []byte) { binary.LittleEndian.PutUint32(r[0x30:], 1) })
	_, err := Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrPolicy, "VMPL 1")
}

func TestVerifySimTCBInconsistent(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := signedVariant(t, sp, func(r []byte) { r[0x180]++ }) // REPORTED_TCB.BL_SPL above the VCEK's
	_, err := Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrPolicy)
}

func TestVerifyTruncatedAndMalformed(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	short := *ev
	short.Report = ev.Report[:len(ev.Report)-1]
	_, err := Verify(&short, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "1183", "1184")

	long := *ev
	long.Report = append(bytes.Clone(ev.Report), 0)
	_, err = Verify(&long, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "1185")

	badVersion := signedVariant(t, sp, func(r []byte) { binary.LittleEndian.PutUint32(r, 1) })
	_, err = Verify(badVersion, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "VERSION 1")

	noReserved := signedVariant(t, sp, func(r []byte) { binary.LittleEndian.PutUint64(r[0x08:], 1<<16) })
	_, err = Verify(noReserved, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "policy")

	_, err = Verify(&attest.Evidence{TEE: "sgx", Report: ev.Report}, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, `"sgx"`)

	_, err = Verify(nil, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed)

	// A sim label on a report without the sim FAMILY_ID is not a sim report.
	noMarker := signedVariant(t, sp, func(r []byte) { copy(r[0x10:0x20], make([]byte, 16)) })
	_, err = Verify(noMarker, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "FAMILY_ID")

	// No certificates at all.
	_, err = Verify(&attest.Evidence{TEE: attest.TEESim, Report: ev.Report}, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrCertChain, "neither a VCEK nor a VLEK")

	// A hostile certificate table whose offset+length wraps 32 bits.
	table := make([]byte, 3*certTableEntrySize)
	copy(table, vcekGUIDBytes(t))
	binary.LittleEndian.PutUint32(table[16:], 0xFFFFFFF0)
	binary.LittleEndian.PutUint32(table[20:], 0x20)
	_, err = Verify(&attest.Evidence{TEE: attest.TEESim, Report: ev.Report, CertTable: table}, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrMalformed, "outside")
}

// A TDX-sized blob that is no quote fails at the layout parser.
func TestVerifyTDXNotAQuote(t *testing.T) {
	_, err := Verify(&attest.Evidence{TEE: attest.TEETDX, Report: make([]byte, 0x400)}, Options{})
	simtest.WantErr(t, err, attest.ErrMalformed, "tdx quote TEE type is 0x0")
}

// A sim report relabelled "snp" is checked against AMD's roots only, and fails there.
func TestVerifySimRelabelledSNP(t *testing.T) {
	sp, _ := simtest.SPs(t)
	ev := simtest.Evidence(t, sp)
	ev.TEE = attest.TEESNP
	_, err := Verify(ev, simOpts(t, sp))
	simtest.WantErr(t, err, attest.ErrCertChain, "AMD's embedded roots")

	opts := simOpts(t, sp)
	opts.AllowSimulated = false
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrSimulatedNotAllowed)
}

// realMilanEvidence is go-sev-guest's real Milan report with its VCEK from AMD's KDS.
func realMilanEvidence() *attest.Evidence {
	return &attest.Evidence{
		TEE:    attest.TEESNP,
		Report: bytes.Clone(sevtestdata.AttestationBytes),
		Certs:  &attest.CertChain{VCEK: bytes.Clone(sevtestdata.VcekBytes)},
	}
}

// The VCEK was valid then; go-sev-guest's own tests use this date.
var realMilanNow = time.Date(2022, time.September, 24, 1, 0, 0, 0, time.UTC)

func TestVerifyRealMilan(t *testing.T) {
	// The report's POLICY is 0xb0000: SMT, the reserved bit and DEBUG. Chain and signature
	// pass against AMD's embedded roots (reaching the policy step proves it); the policy step
	// then rejects the debug guest.
	_, err := Verify(realMilanEvidence(), Options{Now: realMilanNow})
	simtest.WantErr(t, err, attest.ErrPolicy, "found unauthorized debug capability", "POLICY 0xb0000")

	// The same report with one signed byte flipped fails the signature under the real VCEK.
	ev := realMilanEvidence()
	ev.Report[0x90] ^= 0x80
	_, err = Verify(ev, Options{Now: realMilanNow})
	simtest.WantErr(t, err, attest.ErrSignature)

	// After the VCEK's validity (7 years) the chain no longer verifies.
	_, err = Verify(realMilanEvidence(), Options{Now: realMilanNow.AddDate(30, 0, 0)})
	simtest.WantErr(t, err, attest.ErrCertChain, "expired")

	// A real report relabelled "sim" never passes as simulated, even with a sim root.
	sp, _ := simtest.SPs(t)
	ev = realMilanEvidence()
	ev.TEE = attest.TEESim
	opts := simOpts(t, sp)
	opts.Now = realMilanNow
	_, err = Verify(ev, opts)
	simtest.WantErr(t, err, attest.ErrMalformed, "FAMILY_ID")

}

func TestLoadCertificatePEM(t *testing.T) {
	sp, other := simtest.SPs(t)
	dir := t.TempDir()

	der := filepath.Join(dir, "root.der")
	if err := os.WriteFile(der, sp.Root().Raw, 0o644); err != nil {
		t.Fatal(err)
	}
	certs, err := LoadCertificatePEM(der)
	if err != nil || len(certs) != 1 || !certs[0].Equal(sp.Root()) {
		t.Fatalf("DER: %v, %d certs", err, len(certs))
	}

	two := filepath.Join(dir, "two.pem")
	a, _ := os.ReadFile(sp.RootPath())
	b, _ := os.ReadFile(other.RootPath())
	if err := os.WriteFile(two, append(a, b...), 0o644); err != nil {
		t.Fatal(err)
	}
	certs, err = LoadCertificatePEM(two)
	if err != nil || len(certs) != 2 || !certs[1].Equal(other.Root()) {
		t.Fatalf("two PEM certs: %v, %d certs", err, len(certs))
	}

	for name, content := range map[string][]byte{
		"garbage": []byte("not a certificate"),
		"key":     []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
		"tail":    append(bytes.Clone(a), []byte("trailing")...),
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadCertificatePEM(p); err == nil {
			t.Errorf("%s: loaded without error", name)
		}
	}
	if _, err := LoadCertificatePEM(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing file: no error")
	}
}
