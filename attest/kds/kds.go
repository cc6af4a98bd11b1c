// Package kds completes SEV-SNP evidence on the host with the certificates that connect a
// report to AMD's root: the VCEK (or VLEK) that signed it and the ASK/ARK above it.
//
// Upstream KVM hands the guest an empty certificate table, so the host fetches the VCEK from
// AMD's key distribution service (KDS) for the report's CHIP_ID and REPORTED_TCB. Every
// certificate is cached on disk (keyed by product line, chip id and TCB), so a host asks KDS
// once per chip and firmware update; KDS rate limits are honoured (HTTP 429/503: wait as
// Retry-After says, back off, give up after a bounded number of attempts, never hammer).
// In offline mode nothing touches the network: certificates come from the report's own
// table, a chain file the user supplies, the cache, and (ASK/ARK only) the AMD bundles
// embedded in go-sev-guest.
//
// Nothing fetched here is trusted: the verifier checks the chain against its own AMD roots.
// The host still checks what it attaches (chain signatures, the VCEK's chip id and TCB
// against the report, the report signature) so it never publishes evidence a verifier
// rejects, and never caches a certificate that does not belong to the request.
package kds

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	sevkds "github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/cloche-dev/cloche/internal/atomicfile"
	"github.com/cloche-dev/cloche/internal/fileio"
)

// DefaultBaseURL is AMD's key distribution service.
const DefaultBaseURL = "https://kdsintf.amd.com"

// Defaults for Options.
const (
	DefaultMaxAttempts    = 5
	DefaultInitialBackoff = 2 * time.Second
	DefaultMaxRetryWait   = 2 * time.Minute
	DefaultRequestTimeout = 30 * time.Second
)

// Limits on what is read from KDS, the cache and chain files.
const (
	maxCertSize  = 16 << 10
	maxChainSize = 64 << 10
	chipIDSize   = 64
)

// Sentinel errors callers branch on.
var (
	// ErrOffline: a certificate is needed that offline mode cannot supply.
	ErrOffline = errors.New("kds: certificate not available offline")
	// ErrRateLimited: KDS kept refusing (429/503) within the attempt and wait limits.
	ErrRateLimited = errors.New("kds: rate limited by the key distribution service")
	// ErrNotFound: KDS has no certificate for the request (HTTP 404).
	ErrNotFound = errors.New("kds: certificate not found")
	// ErrMismatch: a certificate does not belong to the report or chain it was meant for.
	ErrMismatch = errors.New("kds: certificate does not match")
	// ErrUnsupported: a product line or signing key this package cannot serve.
	ErrUnsupported = errors.New("kds: unsupported")
)

// Options configure a Client. Zero values take the documented defaults.
type Options struct {
	// BaseURL replaces DefaultBaseURL (tests, mirrors).
	BaseURL string
	// HTTPClient is used for every request; nil means a client with DefaultRequestTimeout.
	HTTPClient *http.Client
	// CacheDir holds fetched certificates; empty means no cache.
	CacheDir string
	// Offline forbids every network request.
	Offline bool
	// ChainFile is a user-supplied PEM or DER file with any of VCEK, VLEK, ASK (or ASVK)
	// and ARK, used before the cache and KDS.
	ChainFile string
	// ProductLine ("Milan", "Genoa") for version 2 reports, which do not carry the CPU
	// family and model. Empty means this host's own CPU's product line, from CPUInfo: the
	// host fetches its own chip's VCEK. (go-sev-guest assumes Milan, which sends a Genoa
	// host on older SNP firmware to the wrong product.)
	ProductLine string
	// CPUInfo is the host's /proc/cpuinfo; empty means DefaultCPUInfo.
	CPUInfo string
	// MaxAttempts bounds requests per certificate (first try plus retries).
	MaxAttempts int
	// InitialBackoff is the first wait after a refusal without Retry-After; it doubles.
	InitialBackoff time.Duration
	// MaxRetryWait caps one wait: a Retry-After beyond it fails at once with
	// ErrRateLimited instead of blocking the build for longer.
	MaxRetryWait time.Duration
	Log          *slog.Logger
}

// Client fetches and caches AMD certificates.
type Client struct {
	o Options
}

// New returns a Client with o's defaults filled in.
func New(o Options) *Client {
	if o.BaseURL == "" {
		o.BaseURL = DefaultBaseURL
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	if o.HTTPClient == nil {
		o.HTTPClient = &http.Client{Timeout: DefaultRequestTimeout}
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = DefaultInitialBackoff
	}
	if o.MaxRetryWait <= 0 {
		o.MaxRetryWait = DefaultMaxRetryWait
	}
	if o.CPUInfo == "" {
		o.CPUInfo = DefaultCPUInfo
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Client{o: o}
}

// checkProductLine accepts the product lines go-sev-guest v0.15.0 can verify. Turin VCEKs
// have an 8-byte HWID and another TCB layout that this version cannot parse.
func checkProductLine(line string) error {
	switch line {
	case "Milan", "Genoa":
		return nil
	}
	return fmt.Errorf("%w: product line %q (expected Milan or Genoa; Turin needs a newer go-sev-guest)", ErrUnsupported, line)
}

// VCEK returns the DER VCEK for a chip at a TCB: from the cache, else (online) from KDS. The
// certificate's HWID and TCB extensions must equal the request.
func (c *Client) VCEK(ctx context.Context, productLine string, chipID []byte, tcb uint64) ([]byte, error) {
	if err := checkProductLine(productLine); err != nil {
		return nil, err
	}
	if len(chipID) != chipIDSize {
		return nil, fmt.Errorf("kds: CHIP_ID is %d bytes, expected %d", len(chipID), chipIDSize)
	}
	if bytes.Equal(chipID, make([]byte, chipIDSize)) {
		return nil, fmt.Errorf("%w: the report's CHIP_ID is masked (all zero), so its VCEK cannot be looked up: supply it in a chain file", ErrUnsupported)
	}
	name := cacheVCEKName(productLine, chipID, tcb)
	check := func(der []byte) error { return checkVCEK(der, chipID, tcb) }
	if der, ok := c.cached(name, maxCertSize, check); ok {
		return der, nil
	}
	if c.o.Offline {
		return nil, fmt.Errorf("%w: the VCEK for %s chip %x… at TCB 0x%016x is not in the cache%s; run once online or supply it in a chain file",
			ErrOffline, productLine, chipID[:8], tcb, c.cacheNote(name))
	}
	url := c.o.BaseURL + strings.TrimPrefix(sevkds.VCEKCertURL(productLine, chipID, sevkds.TCBVersion(tcb)), DefaultBaseURL)
	der, err := c.get(ctx, url, maxCertSize)
	if err != nil {
		return nil, fmt.Errorf("fetching the VCEK: %w", err)
	}
	if err := check(der); err != nil {
		return nil, fmt.Errorf("VCEK from %s: %w", url, err)
	}
	c.store(name, der)
	return der, nil
}

// cacheVCEKName is a VCEK's cache entry, keyed by product line, chip id and TCB.
func cacheVCEKName(productLine string, chipID []byte, tcb uint64) string {
	return filepath.Join(productLine, "vcek", fmt.Sprintf("%s-%016x.der", hex.EncodeToString(chipID), tcb))
}

// ProductChain returns the DER ASK (or ASVK for a VLEK) and ARK of a product line: from the
// cache, else online from KDS, else offline from go-sev-guest's embedded AMD bundles. The
// ASK must be signed by the ARK and the ARK by itself.
func (c *Client) ProductChain(ctx context.Context, productLine string, key abi.ReportSigner) (ask, ark []byte, err error) {
	if err := checkProductLine(productLine); err != nil {
		return nil, nil, err
	}
	kind := "vcek"
	switch key {
	case abi.VcekReportSigner:
	case abi.VlekReportSigner:
		kind = "vlek"
	default:
		return nil, nil, fmt.Errorf("%w: signing key %v", ErrUnsupported, key)
	}
	name := filepath.Join(productLine, kind+"-cert_chain.pem")
	check := func(pems []byte) error {
		_, _, err := parseChain(pems)
		return err
	}
	if pems, ok := c.cached(name, maxChainSize, check); ok {
		return parseChain(pems)
	}
	if c.o.Offline {
		pems := embeddedChain(productLine, key)
		if pems == nil {
			return nil, nil, fmt.Errorf("%w: no %s certificate chain for %s in the cache or embedded", ErrOffline, kind, productLine)
		}
		c.o.Log.Info("kds: offline: using the embedded AMD certificate chain", "product", productLine, "key", kind)
		return parseChain(pems)
	}
	url := c.o.BaseURL + strings.TrimPrefix(sevkds.ProductCertChainURL(key, productLine), DefaultBaseURL)
	pems, err := c.get(ctx, url, maxChainSize)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching the %s certificate chain: %w", productLine, err)
	}
	ask, ark, err = parseChain(pems)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate chain from %s: %w", url, err)
	}
	c.store(name, pems)
	return ask, ark, nil
}

func embeddedChain(line string, key abi.ReportSigner) []byte {
	switch {
	case line == "Milan" && key == abi.VcekReportSigner:
		return trust.AskArkMilanVcekBytes
	case line == "Milan" && key == abi.VlekReportSigner:
		return trust.AskArkMilanVlekBytes
	case line == "Genoa" && key == abi.VcekReportSigner:
		return trust.AskArkGenoaVcekBytes
	case line == "Genoa" && key == abi.VlekReportSigner:
		return trust.AskArkGenoaVlekBytes
	}
	return nil
}

// parseChain parses KDS's cert_chain body (PEM ASK then ARK) and checks its signatures.
func parseChain(pems []byte) (ask, ark []byte, err error) {
	ask, ark, err = sevkds.ParseProductCertChain(pems)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: certificate chain: %w", ErrMismatch, err)
	}
	if err := checkSignedBy(ask, ark, "ASK", "ARK"); err != nil {
		return nil, nil, err
	}
	if err := checkSignedBy(ark, ark, "ARK", "itself"); err != nil {
		return nil, nil, err
	}
	return ask, ark, nil
}

func checkSignedBy(childDER, parentDER []byte, child, parent string) error {
	c, err := x509.ParseCertificate(childDER)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMismatch, child, err)
	}
	p, err := x509.ParseCertificate(parentDER)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrMismatch, parent, err)
	}
	if err := c.CheckSignatureFrom(p); err != nil {
		return fmt.Errorf("%w: %s (%s) is not signed by %s (%s): %w", ErrMismatch, child, c.Subject.CommonName, parent, p.Subject.CommonName, err)
	}
	return nil
}

// checkVCEK checks that a VCEK is for chipID at tcb.
func checkVCEK(der, chipID []byte, tcb uint64) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("%w: VCEK: %w", ErrMismatch, err)
	}
	ext, err := sevkds.VcekCertificateExtensions(cert)
	if err != nil {
		return fmt.Errorf("%w: VCEK extensions: %w", ErrMismatch, err)
	}
	if !bytes.Equal(ext.HWID, chipID) {
		return fmt.Errorf("%w: VCEK is for chip %x…, the report's CHIP_ID is %x…", ErrMismatch, ext.HWID[:min(8, len(ext.HWID))], chipID[:8])
	}
	if uint64(ext.TCBVersion) != tcb {
		return fmt.Errorf("%w: VCEK is for TCB 0x%016x, the report's REPORTED_TCB is 0x%016x", ErrMismatch, uint64(ext.TCBVersion), tcb)
	}
	return nil
}

// cached returns a cache entry that passes check. A bad entry is logged and ignored (and
// replaced by the next successful fetch).
func (c *Client) cached(name string, limit int64, check func([]byte) error) ([]byte, bool) {
	if c.o.CacheDir == "" {
		return nil, false
	}
	path := filepath.Join(c.o.CacheDir, name)
	b, err := fileio.ReadCapped(path, limit)
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			c.o.Log.Warn("kds: unreadable cache entry", "path", path, "err", err)
		}
		return nil, false
	}
	if err := check(b); err != nil {
		c.o.Log.Warn("kds: ignoring a cache entry that does not match its name", "path", path, "err", err)
		return nil, false
	}
	return b, true
}

func (c *Client) cacheNote(name string) string {
	if c.o.CacheDir == "" {
		return " (no cache directory configured)"
	}
	return " (" + filepath.Join(c.o.CacheDir, name) + ")"
}

// store writes a cache entry atomically; a failure only costs a later fetch.
func (c *Client) store(name string, b []byte) {
	if c.o.CacheDir == "" {
		return
	}
	path := filepath.Join(c.o.CacheDir, name)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		c.o.Log.Warn("kds: could not create the cache directory", "path", filepath.Dir(path), "err", err)
		return
	}
	if err := atomicfile.WriteFile(path, b, 0o644); err != nil {
		c.o.Log.Warn("kds: could not cache a certificate", "path", path, "err", err)
	}
}

// get fetches url with bounded retries: 429 and 503 wait as long as Retry-After says (or the
// current backoff, whichever is longer), other 5xx and network errors back off; 404 is
// ErrNotFound; other statuses fail at once.
func (c *Client) get(ctx context.Context, url string, limit int64) ([]byte, error) {
	backoff := c.o.InitialBackoff
	var last error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		wait, err := c.try(ctx, url, limit)
		if err == nil {
			return wait.body, nil
		}
		last = err
		if !wait.retry {
			return nil, err
		}
		if attempt >= c.o.MaxAttempts {
			return nil, fmt.Errorf("%w: gave up after %d attempts: %v", ErrRateLimited, attempt, last)
		}
		d := max(backoff, wait.retryAfter)
		if d > c.o.MaxRetryWait {
			return nil, fmt.Errorf("%w: KDS asks to wait %s, more than the %s limit: %v", ErrRateLimited, d, c.o.MaxRetryWait, last)
		}
		c.o.Log.Info("kds: retrying", "url", url, "attempt", attempt, "wait", d, "err", err)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		backoff *= 2
	}
}

type attemptResult struct {
	body       []byte
	retry      bool
	retryAfter time.Duration
}

func (c *Client) try(ctx context.Context, url string, limit int64) (attemptResult, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return attemptResult{}, fmt.Errorf("kds: request %s: %w", url, err)
	}
	resp, err := c.o.HTTPClient.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return attemptResult{}, ctx.Err()
		}
		return attemptResult{retry: true}, fmt.Errorf("kds: GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusOK:
		b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
		if err != nil {
			return attemptResult{retry: true}, fmt.Errorf("kds: GET %s: reading the body: %w", url, err)
		}
		if int64(len(b)) > limit {
			return attemptResult{}, fmt.Errorf("kds: GET %s: body is larger than %d bytes", url, limit)
		}
		return attemptResult{body: b}, nil
	case resp.StatusCode == http.StatusNotFound:
		return attemptResult{}, fmt.Errorf("%w: GET %s: %s", ErrNotFound, url, resp.Status)
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		return attemptResult{retry: true, retryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())},
			fmt.Errorf("kds: GET %s: %s", url, resp.Status)
	case resp.StatusCode >= 500:
		return attemptResult{retry: true}, fmt.Errorf("kds: GET %s: %s", url, resp.Status)
	}
	return attemptResult{}, fmt.Errorf("kds: GET %s: %s", url, resp.Status)
}

// retryAfter parses a Retry-After header: delay seconds or an HTTP date. Unparsable or
// absent gives 0 (the caller's backoff applies).
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		if s < 0 {
			return 0
		}
		if s > int64(24*time.Hour/time.Second) {
			s = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// checkReportSignature verifies the report's signature with the endorsement key certificate.
func checkReportSignature(report, der []byte) error {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return fmt.Errorf("%w: endorsement key certificate: %w", ErrMismatch, err)
	}
	if err := verify.SnpReportSignature(report, cert); err != nil {
		return fmt.Errorf("%w: the report's signature does not verify with the %s certificate: %w", ErrMismatch, cert.Subject.CommonName, err)
	}
	return nil
}
