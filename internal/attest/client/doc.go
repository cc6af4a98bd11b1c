// Package client is the guest side of attestation: the providers that ask the TEE for
// evidence from inside the confidential VM. NewTSMProvider uses the kernel's configfs-tsm
// report interface (SEV-SNP and TDX); OpenGuestDeviceProvider falls back to /dev/sev-guest;
// WithTDReportLaunchDigest makes a TDX provider read the launch digest from the TDREPORT,
// which the host cannot forge; NewSimProvider speaks to the host's simulated secure processor
// (attest/simsp) over the port named attest.SimPortName.
//
// Every provider checks that the REPORT_DATA it got back is the one it asked for. The package
// imports go-sev-guest's and go-tdx-guest's client code only, never their verify, validate or
// testing packages: it is linked into the guest init, which the launch measures.
package client
