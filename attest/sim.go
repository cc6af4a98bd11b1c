package attest

// The simulated TEE's visible markers and channel, shared by its guest side (attest/client),
// its host side (attest/simsp) and the verifier (attest/verifier).

// SimFamilyID marks every simulated report (FAMILY_ID at 0x10). A verifier treats any report
// carrying it as simulated, whatever its TEE label says.
var SimFamilyID = [16]byte{'C', 'L', 'O', 'C', 'H', 'E', '-', 'S', 'I', 'M', 'U', 'L', 'A', 'T', 'E', 'D'}

// SimImageID is the IMAGE_ID (0x20) of every simulated report, a second visible marker.
var SimImageID = [16]byte{'C', 'L', 'O', 'C', 'H', 'E', '-', 'S', 'I', 'M', '-', 'I', 'M', 'A', 'G', 'E'}

// SimReportVersion is the report VERSION the simulated secure processor writes; a verifier
// refuses sim evidence of any other.
const SimReportVersion = 3

// SimPortName is the virtio-serial port over which the guest asks the host's simulated
// secure processor for reports (the protocol is documented in attest/internal/simwire).
const SimPortName = "org.cloche.simtee.0"
