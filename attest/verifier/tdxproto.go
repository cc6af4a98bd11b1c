package verifier

import (
	"bytes"
	"fmt"

	tdxabi "github.com/google/go-tdx-guest/abi"

	"github.com/cloche-dev/cloche/attest"
)

// TD attributes and XFAM bits (Intel TDX module specification).
const (
	tdAttrDebug         = uint64(1) << 0
	tdAttrSeptVEDisable = uint64(1) << 28
	tdAttrPKS           = uint64(1) << 30
	tdAttrPerfmon       = uint64(1) << 63
	// tdAttrAllowed are the bits a TD cloche accepts may have (besides DEBUG when allowed);
	// anything else (e.g. a migratable TD) is rejected.
	tdAttrAllowed = tdAttrDebug | tdAttrSeptVEDisable | tdAttrPKS | tdAttrPerfmon
	xfamFixed1    = uint64(0x3)
	xfamFixed0    = uint64(0x6DBE7)
)

// tdxQuoteToProto runs go-tdx-guest's parser on a quote cloche's parser accepted, turning a
// panic (a parser bug on hostile input) into ErrMalformed: fail closed, never crash.
func tdxQuoteToProto(b []byte) (quote any, err error) {
	defer func() {
		if r := recover(); r != nil {
			quote, err = nil, fmt.Errorf("%w: go-tdx-guest could not parse the quote: %v", attest.ErrMalformed, r)
		}
	}()
	quote, err = tdxabi.QuoteToProto(bytes.Clone(b))
	if err != nil {
		return nil, fmt.Errorf("%w: tdx quote: %w", attest.ErrMalformed, err)
	}
	return quote, nil
}
