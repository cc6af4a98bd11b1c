// Package simsp is the host side of the simulated TEE: SP plays AMD's secure processor for
// guests launched with TEE "sim", signing SNP-format reports with a locally generated chain
// and answering the guest's requests over the protocol of attest/internal/simwire.
// docs/design.md ("Simulated TEE") says what it proves: nothing about the host.
package simsp

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	"github.com/google/uuid"

	"github.com/cloche-dev/cloche/attest"
	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/attest/simwire"
	"github.com/cloche-dev/cloche/internal/fileio"
)

// Files of the simulated secure processor's state directory.
const (
	// simStateFile holds the VCEK private key and the ARK, ASK and VCEK certificates (0600).
	// The ARK and ASK private keys are discarded after creation: nothing needs them again,
	// and a stolen state file then cannot mint a second chain under the same root.
	simStateFile = "simsp.pem"
	// simRootFile is the sim ARK certificate alone, what a verifier passes as
	// --trusted-sim-root (0644).
	simRootFile = "sim-ark.pem"

	maxSimStateSize = 64 << 10
)

// The simulated platform: an AMD Milan B0 with plausible firmware and TCB numbers. The
// values only have to be self-consistent (report TCB fields equal the VCEK's extensions).
const (
	simProductName   = "Milan-B0"
	simCpuid1Eax     = 0x00a00f10 // family 0x19, model 0x01, stepping 0
	simFirmwareMajor = 1
	simFirmwareMinor = 55
	simFirmwareBuild = 21
	// simPlatformInfo sets SMT_EN: the simulated host has SMT enabled, like most hosts.
	simPlatformInfo = 0x1
)

var simTCB = kds.TCBParts{BlSpl: 4, TeeSpl: 0, SnpSpl: 22, UcodeSpl: 213}

// PEM block types and headers of the state file.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemRoleHeader  = "Role"
)

// SP is the host playing AMD's secure processor for the simulated TEE (docs/design.md,
// "Simulated TEE"). It signs SNP-format reports with a locally generated VCEK whose chain
// (ARK -> ASK -> VCEK) is shaped like AMD's, so go-sev-guest's verifier accepts it when, and
// only when, the sim ARK is passed as the trusted root.
type SP struct {
	dir       string
	ark, ask  *x509.Certificate
	vcek      *x509.Certificate
	vcekKey   *ecdsa.PrivateKey
	tcb       uint64
	hwid      [64]byte
	certTable []byte
}

// LoadOrCreate loads the simulated secure processor's chain from dir, or creates and
// persists a fresh one (keys 0600, files written atomically) when dir holds none yet.
func LoadOrCreate(dir string) (*SP, error) {
	if dir == "" {
		return nil, errors.New("simulated TEE: state directory is empty")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("simulated TEE: creating state directory: %w", err)
	}
	statePath := filepath.Join(dir, simStateFile)
	if st, err := os.Stat(statePath); err == nil && st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("simulated TEE: state file %s holds a private key but has mode %v, expected 0600", statePath, st.Mode().Perm())
	}
	state, err := fileio.ReadCapped(statePath, maxSimStateSize)
	if errors.Is(err, fs.ErrNotExist) {
		state, err = createSimState(statePath)
	}
	if err != nil {
		return nil, fmt.Errorf("simulated TEE: %w", err)
	}
	sp, err := parseSimState(state, time.Now())
	if err != nil {
		return nil, fmt.Errorf("simulated TEE: state file %s: %w", statePath, err)
	}
	sp.dir = dir
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: sp.ark.Raw})
	if cur, err := fileio.ReadCapped(sp.RootPath(), maxSimStateSize); err != nil || !bytes.Equal(cur, rootPEM) {
		if err := atomicfile.WriteFile(sp.RootPath(), rootPEM, 0o644); err != nil {
			return nil, fmt.Errorf("simulated TEE: writing root certificate: %w", err)
		}
	}
	return sp, nil
}

// createSimState generates a new chain and stores it at path unless another process got
// there first, in which case that state wins and is returned.
func createSimState(path string) ([]byte, error) {
	state, err := newSimState(time.Now())
	if err != nil {
		return nil, err
	}
	f, err := atomicfile.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Abort()
	if _, err := f.Write(state); err != nil {
		return nil, fmt.Errorf("storing state file: %w", err)
	}
	// Two agents starting at once keep one chain: CommitNew never replaces the file.
	if err := f.CommitNew(0o600); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fileio.ReadCapped(path, maxSimStateSize)
		}
		return nil, fmt.Errorf("storing state file: %w", err)
	}
	return state, nil
}

// newSimState generates fresh keys and certifies them the way AMD's KDS does (newSimChain).
// Never go-sev-guest's test keys: those private keys are public.
func newSimState(now time.Time) ([]byte, error) {
	arkKey, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		return nil, fmt.Errorf("generating ARK key: %w", err)
	}
	askKey, err := rsa.GenerateKey(rand.Reader, 4096)
	if err != nil {
		return nil, fmt.Errorf("generating ASK key: %w", err)
	}
	vcekKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating VCEK key: %w", err)
	}
	var hwid [64]byte
	if _, err := rand.Read(hwid[:]); err != nil {
		return nil, fmt.Errorf("generating HWID: %w", err)
	}
	chain, err := newSimChain(simChainParams{
		productName: simProductName,
		created:     now.Add(-time.Minute).UTC().Truncate(time.Second),
		ark:         arkKey, ask: askKey, vcek: vcekKey,
		hwid: hwid, tcb: simTCB,
	})
	if err != nil {
		return nil, fmt.Errorf("certifying the simulated chain: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(vcekKey)
	if err != nil {
		return nil, fmt.Errorf("encoding VCEK key: %w", err)
	}
	var out bytes.Buffer
	for _, blk := range []*pem.Block{
		{Type: pemPrivateKey, Headers: map[string]string{pemRoleHeader: "VCEK"}, Bytes: keyDER},
		{Type: pemCertificate, Headers: map[string]string{pemRoleHeader: "ARK"}, Bytes: chain.ark.Raw},
		{Type: pemCertificate, Headers: map[string]string{pemRoleHeader: "ASK"}, Bytes: chain.ask.Raw},
		{Type: pemCertificate, Headers: map[string]string{pemRoleHeader: "VCEK"}, Bytes: chain.vcek.Raw},
	} {
		if err := pem.Encode(&out, blk); err != nil {
			return nil, err
		}
	}
	return out.Bytes(), nil
}

// parseSimState reads the state file and checks that it is one consistent chain.
func parseSimState(state []byte, now time.Time) (*SP, error) {
	sp := &SP{}
	rest := state
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		role := blk.Headers[pemRoleHeader]
		switch {
		case blk.Type == pemPrivateKey && role == "VCEK" && sp.vcekKey == nil:
			k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("VCEK key: %w", err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok || ek.Curve != elliptic.P384() {
				return nil, errors.New("VCEK key is not an ECDSA P-384 key")
			}
			sp.vcekKey = ek
		case blk.Type == pemCertificate && (role == "ARK" || role == "ASK" || role == "VCEK"):
			c, err := x509.ParseCertificate(blk.Bytes)
			if err != nil {
				return nil, fmt.Errorf("%s certificate: %w", role, err)
			}
			slot := map[string]**x509.Certificate{"ARK": &sp.ark, "ASK": &sp.ask, "VCEK": &sp.vcek}[role]
			if *slot != nil {
				return nil, fmt.Errorf("duplicate %s certificate", role)
			}
			*slot = c
		default:
			return nil, fmt.Errorf("unexpected PEM block %q with role %q", blk.Type, role)
		}
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the PEM blocks")
	}
	if sp.vcekKey == nil || sp.ark == nil || sp.ask == nil || sp.vcek == nil {
		return nil, errors.New("incomplete: need the VCEK key and the ARK, ASK and VCEK certificates")
	}
	if !sp.vcekKey.PublicKey.Equal(sp.vcek.PublicKey) {
		return nil, errors.New("VCEK key does not match the VCEK certificate")
	}
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sp.ark)
	inter.AddCert(sp.ask)
	if _, err := sp.vcek.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now}); err != nil {
		return nil, fmt.Errorf("VCEK does not chain to the ARK: %w", err)
	}
	exts, err := kds.VcekCertificateExtensions(sp.vcek)
	if err != nil {
		return nil, fmt.Errorf("VCEK extensions: %w", err)
	}
	if len(exts.HWID) != len(sp.hwid) {
		return nil, fmt.Errorf("VCEK HWID is %d bytes, expected %d", len(exts.HWID), len(sp.hwid))
	}
	copy(sp.hwid[:], exts.HWID)
	sp.tcb = uint64(exts.TCBVersion)
	sp.certTable = (&abi.CertTable{Entries: []abi.CertTableEntry{
		{GUID: uuid.MustParse(abi.ArkGUID), RawCert: sp.ark.Raw},
		{GUID: uuid.MustParse(abi.AskGUID), RawCert: sp.ask.Raw},
		{GUID: uuid.MustParse(abi.VcekGUID), RawCert: sp.vcek.Raw},
	}}).Marshal()
	return sp, nil
}

// RootPath is the PEM file of the sim ARK, what a verifier passes as --trusted-sim-root.
func (sp *SP) RootPath() string { return filepath.Join(sp.dir, simRootFile) }

// Root returns the sim ARK certificate.
func (sp *SP) Root() *x509.Certificate { return sp.ark }

// Chain returns a copy of the DER certificates of the simulated chain.
func (sp *SP) Chain() *attest.CertChain {
	return &attest.CertChain{
		ARK:  bytes.Clone(sp.ark.Raw),
		ASK:  bytes.Clone(sp.ask.Raw),
		VCEK: bytes.Clone(sp.vcek.Raw),
	}
}

// CertTable returns a copy of the GHCB certificate table (ARK, ASK, VCEK) the SP hands the
// guest with every report.
func (sp *SP) CertTable() []byte { return bytes.Clone(sp.certTable) }

// Launch is what the host "measured" and set at launch for one VM.
type Launch struct {
	Measurement [48]byte
	HostData    [32]byte
}

// Report signs one SNP-format report (abi layout, VERSION 3, Milan FMS at 0x188, POLICY = SMT
// and the reserved bit, VMPL 0, ECDSA P-384, TCB fields equal to the VCEK's, FAMILY_ID =
// SimFamilyID, IMAGE_ID = SimImageID, MEASUREMENT and HOST_DATA from launch, REPORT_DATA from
// the request).
func (sp *SP) Report(launch Launch, reportData [64]byte) ([]byte, error) {
	r := sp.unsignedReport(launch, reportData)
	if err := sp.sign(r); err != nil {
		return nil, err
	}
	return r, nil
}

func (sp *SP) unsignedReport(launch Launch, reportData [64]byte) []byte {
	r := make([]byte, attest.SNPReportSize)
	le := binary.LittleEndian
	le.PutUint32(r[0x000:], attest.SimReportVersion)
	le.PutUint32(r[0x004:], 0) // GUEST_SVN
	le.PutUint64(r[0x008:], abi.SnpPolicyToBytes(abi.SnpPolicy{SMT: true}))
	copy(r[0x010:0x020], attest.SimFamilyID[:])
	copy(r[0x020:0x030], attest.SimImageID[:])
	le.PutUint32(r[0x030:], 0) // VMPL
	le.PutUint32(r[0x034:], abi.SignEcdsaP384Sha384)
	le.PutUint64(r[0x038:], sp.tcb) // CURRENT_TCB
	le.PutUint64(r[0x040:], simPlatformInfo)
	le.PutUint32(r[0x048:], abi.ComposeSignerInfo(abi.SignerInfo{SigningKey: abi.VcekReportSigner}))
	copy(r[0x050:0x090], reportData[:])
	copy(r[0x090:0x0C0], launch.Measurement[:])
	copy(r[0x0C0:0x0E0], launch.HostData[:])
	// REPORT_ID is per guest: derive it from the launch so repeated reports of one VM agree.
	rid := sha256.Sum256(append(append([]byte("cloche-sim-report-id-v1\x00"), launch.Measurement[:]...), launch.HostData[:]...))
	copy(r[0x140:0x160], rid[:])
	for i := 0x160; i < 0x180; i++ { // REPORT_ID_MA: no migration agent
		r[i] = 0xff
	}
	le.PutUint64(r[0x180:], sp.tcb) // REPORTED_TCB
	fam, model, step := abi.FmsFromCpuid1Eax(simCpuid1Eax)
	r[0x188], r[0x189], r[0x18A] = fam, model, step
	copy(r[0x1A0:0x1E0], sp.hwid[:])
	le.PutUint64(r[0x1E0:], sp.tcb) // COMMITTED_TCB
	r[0x1E8], r[0x1E9], r[0x1EA] = simFirmwareBuild, simFirmwareMinor, simFirmwareMajor
	r[0x1EC], r[0x1ED], r[0x1EE] = simFirmwareBuild, simFirmwareMinor, simFirmwareMajor
	le.PutUint64(r[0x1F0:], sp.tcb) // LAUNCH_TCB
	return r
}

// Resign signs report (an SNP-format report of any content) in place with the simulated
// VCEK, as a lying secure processor would: the test kit uses it to check that a verifier
// refuses what the signature cannot vouch against (wrong measurement, policy, TCB...).
func (sp *SP) Resign(report []byte) error {
	if len(report) != attest.SNPReportSize {
		return fmt.Errorf("%w: report is %d bytes, expected %d", attest.ErrMalformed, len(report), attest.SNPReportSize)
	}
	return sp.sign(report)
}

// sign writes the VCEK's ECDSA P-384/SHA-384 signature over report[0:0x2A0] into the report.
func (sp *SP) sign(r []byte) error {
	digest := sha512.Sum384(abi.SignedComponent(r))
	R, S, err := ecdsa.Sign(rand.Reader, sp.vcekKey, digest[:])
	if err != nil {
		return fmt.Errorf("simulated TEE: signing report: %w", err)
	}
	return abi.SetSignature(R, S, r)
}

// Serve answers report requests from one guest on conn until EOF or ctx is done, following
// the protocol documented at SimPortName. A clean EOF between requests returns nil. A bad
// request gets an error response and ends the session, since the stream cannot be trusted to
// be in step any more.
func (sp *SP) Serve(ctx context.Context, conn io.ReadWriter, launch Launch) error {
	stop := simwire.BindDeadline(ctx, conn)
	defer stop()
	var req [simwire.ReqSize]byte
	for n := 0; ; n++ {
		if _, err := io.ReadFull(conn, req[:]); err != nil {
			if errors.Is(err, io.EOF) && ctx.Err() == nil {
				return nil
			}
			return fmt.Errorf("simulated TEE: reading request: %w", simwire.CtxErrOr(ctx, err))
		}
		if string(req[:8]) != simwire.ReqMagic {
			err := fmt.Errorf("%w: request magic is %q, expected %q", attest.ErrSimProtocol, simwire.Printable(req[:8]), simwire.ReqMagic)
			_ = simwire.WriteError(conn, simwire.StatusBadRequest, err.Error())
			return err
		}
		if n >= simwire.MaxRequests {
			err := fmt.Errorf("%w: more than %d report requests on one connection", attest.ErrSimProtocol, simwire.MaxRequests)
			_ = simwire.WriteError(conn, simwire.StatusBadRequest, err.Error())
			return err
		}
		var rd [64]byte
		copy(rd[:], req[8:])
		report, err := sp.Report(launch, rd)
		if err != nil {
			_ = simwire.WriteError(conn, simwire.StatusInternal, "report signing failed")
			return err
		}
		if err := simwire.WriteResponse(conn, report, sp.certTable); err != nil {
			return fmt.Errorf("simulated TEE: writing response: %w", simwire.CtxErrOr(ctx, err))
		}
	}
}

// Complete fills ev.Certs on the host: for sim evidence with this SP's chain (after
// checking the report carries this SP's chip id), for SNP from the evidence's certificate
// table (CompleteSNPFromCertTable).
func (sp *SP) Complete(ev *attest.Evidence) error {
	if ev == nil {
		return fmt.Errorf("%w: nil evidence", attest.ErrMalformed)
	}
	switch ev.TEE {
	case attest.TEESim:
		if err := ev.CheckShape(); err != nil {
			return err
		}
		if chip := ev.Report[0x1A0:0x1E0]; !bytes.Equal(chip, sp.hwid[:]) {
			return fmt.Errorf("%w: sim report CHIP_ID %x is not this simulated processor's %x", attest.ErrCertChain, chip, sp.hwid[:])
		}
		ev.Certs = sp.Chain()
		return nil
	case attest.TEESNP:
		return attest.CompleteSNPFromCertTable(ev)
	case attest.TEETDX:
		return fmt.Errorf("%w: completing tdx evidence (quote collateral) is not implemented yet", attest.ErrUnsupported)
	default:
		return ev.CheckShape()
	}
}
