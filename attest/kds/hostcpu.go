package kds

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cloche-dev/cloche/attest/verifier"
)

// DefaultCPUInfo is where the host's CPU identification is read.
const DefaultCPUInfo = "/proc/cpuinfo"

// HostProductLine names the SNP product line of the CPU described by a /proc/cpuinfo: a
// host fetches the VCEK of its own chip, and a VERSION 2 report (SNP firmware before 1.55)
// does not carry the CPU's family and model, so the host's own CPUID is the authority for
// which KDS product to ask. It fails for a CPU that is not a known SNP product line, rather
// than guessing Milan and fetching another product's certificate.
func HostProductLine(cpuinfo io.Reader) (string, error) {
	vendor, family, model, err := firstCPU(cpuinfo)
	if err != nil {
		return "", err
	}
	if vendor != "AuthenticAMD" {
		return "", fmt.Errorf("kds: the host CPU is %q, not an AMD CPU with SEV-SNP", vendor)
	}
	if line := verifier.SNPProductLineOf(family, model); line != "" {
		return line, nil
	}
	return "", fmt.Errorf("kds: AMD CPU family 0x%x model 0x%x is no SEV-SNP product line this build knows (Milan: family 0x19 models 0x00-0x0f; Genoa: 0x19 models 0x10-0x1f and 0xa0-0xaf)", family, model)
}

// firstCPU reads vendor_id, cpu family and model of the first processor in cpuinfo.
func firstCPU(cpuinfo io.Reader) (vendor string, family, model uint64, err error) {
	var haveFamily, haveModel bool
	sc := bufio.NewScanner(io.LimitReader(cpuinfo, 1<<20))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			if strings.TrimSpace(sc.Text()) == "" && vendor != "" {
				break // the end of the first processor's block
			}
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch k {
		case "vendor_id":
			vendor = v
		case "cpu family":
			family, err = strconv.ParseUint(v, 10, 32)
			haveFamily = err == nil
		case "model":
			model, err = strconv.ParseUint(v, 10, 32)
			haveModel = err == nil
		}
		if err != nil {
			return "", 0, 0, fmt.Errorf("kds: cpuinfo %s %q: %w", k, v, err)
		}
	}
	if err := sc.Err(); err != nil {
		return "", 0, 0, fmt.Errorf("kds: reading cpuinfo: %w", err)
	}
	if vendor == "" || !haveFamily || !haveModel {
		return "", 0, 0, fmt.Errorf("kds: cpuinfo names no vendor_id, cpu family and model")
	}
	return vendor, family, model, nil
}

// hostProductLine reads the product line from the file at path.
func hostProductLine(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kds: the product line of a version 2 report comes from this host's CPU: %w", err)
	}
	defer f.Close()
	return HostProductLine(f)
}
