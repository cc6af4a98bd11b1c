package measure

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
)

// simMeasurementDomain separates the simulated measurement from any other SHA-384 use.
const simMeasurementDomain = "cloche-sim-measurement-v1\x00"

// LaunchInputs are what the simulated secure processor (attest/simsp) "measures" at launch: the guest image
// (kernel, initrd, command line) and the VM shape.
type LaunchInputs struct {
	KernelSHA256, InitrdSHA256 [32]byte
	Cmdline                    string
	VCPUs                      uint32
	MemoryMiB                  uint64
}

// SimMeasurement computes the simulated MEASUREMENT from the launch inputs. It is documented
// and recomputable, so a verifier can derive the reference value from the released guest
// image:
//
//	SHA-384("cloche-sim-measurement-v1\x00" || sha256(kernel) || sha256(initrd) ||
//	        u32le(len(cmdline)) || cmdline || u32le(vcpus) || u64le(memoryMiB))
func SimMeasurement(in LaunchInputs) [48]byte {
	h := sha512.New384()
	h.Write([]byte(simMeasurementDomain))
	h.Write(in.KernelSHA256[:])
	h.Write(in.InitrdSHA256[:])
	var n [8]byte
	binary.LittleEndian.PutUint32(n[:4], uint32(len(in.Cmdline)))
	h.Write(n[:4])
	h.Write([]byte(in.Cmdline))
	binary.LittleEndian.PutUint32(n[:4], in.VCPUs)
	h.Write(n[:4])
	binary.LittleEndian.PutUint64(n[:], in.MemoryMiB)
	h.Write(n[:])
	var m [48]byte
	copy(m[:], h.Sum(nil))
	return m
}

// LaunchInputsFromFiles hashes the kernel and initrd files (each capped at MaxBootFileSize). An empty initrd path means no
// initrd, which is measured as the SHA-256 of empty input.
func LaunchInputsFromFiles(kernel, initrd, cmdline string, vcpus uint32, memoryMiB uint64) (LaunchInputs, error) {
	in := LaunchInputs{Cmdline: cmdline, VCPUs: vcpus, MemoryMiB: memoryMiB}
	if kernel == "" {
		return in, errors.New("launch inputs: kernel path is empty")
	}
	if vcpus == 0 || memoryMiB == 0 {
		return in, fmt.Errorf("launch inputs: vcpus (%d) and memory (%d MiB) must be positive", vcpus, memoryMiB)
	}
	var err error
	if in.KernelSHA256, err = sha256File(kernel); err != nil {
		return in, fmt.Errorf("launch inputs: kernel: %w", err)
	}
	if initrd == "" {
		in.InitrdSHA256 = sha256.Sum256(nil)
	} else if in.InitrdSHA256, err = sha256File(initrd); err != nil {
		return in, fmt.Errorf("launch inputs: initrd: %w", err)
	}
	return in, nil
}
