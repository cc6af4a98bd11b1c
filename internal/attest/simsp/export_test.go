package simsp

import "crypto/x509"

// What the external tests look at inside an SP.
const (
	StateFile = simStateFile
	RootFile  = simRootFile
)

var SimTCB = simTCB

func Dir(sp *SP) string { return sp.dir }

func Certs(sp *SP) (ark, ask, vcek *x509.Certificate) { return sp.ark, sp.ask, sp.vcek }
