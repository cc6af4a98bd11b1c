package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/internal/host"
	"github.com/cloche-dev/cloche/internal/hostcheck"
)

// teeHostFlags are the host settings a hardware TEE needs, shared by run and doctor.
type teeHostFlags struct {
	snpFirmware, tdxFirmware, qgs string
}

func (t *teeHostFlags) register(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVar(&t.snpFirmware, "snp-firmware", "", "SEV-SNP firmware: OVMF built from OvmfPkg/AmdSev/AmdSevX64.dsc (default: firmware/OVMF.amdsev.fd in the state directory)")
	fl.StringVar(&t.tdxFirmware, "tdx-firmware", "", "TDX firmware: TDVF (default: firmware/TDVF.fd in the state directory)")
	fl.StringVar(&t.qgs, "qgs", "", "TDX quote generation service: unix:PATH or vsock:CID:PORT (default unix:/var/run/tdx-qgs/qgs.socket)")
}

// host returns the hostcheck.Host for these settings; guestDir is the guest image directory
// whose kernel and initrd are checked (its absence is only a warning).
func (t *teeHostFlags) host(state, qemu, guestDir string) hostcheck.Host {
	c := host.Config{StateDir: state, QEMU: qemu, SNPFirmware: t.snpFirmware, TDXFirmware: t.tdxFirmware, QGS: t.qgs}
	return c.HostCheck(guestDir)
}

func newDoctorCmd(g *globals) *cobra.Command {
	var (
		asJSON     bool
		require    string
		qemu       string
		guestImage string
		tee        teeHostFlags
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Show which TEEs this host can run, what is missing and how to fix it",
		Long: `Doctor checks what a confidential build needs from this host: for SEV-SNP the CPU, the
kvm_amd sev_snp parameter, /dev/sev, QEMU 9.1 or later and the AmdSev OVMF firmware; for TDX
the kvm_intel tdx parameter, the quote generation service, QEMU 10.1 or later and TDVF; and
for every TEE whether KVM really runs guests and the guest image. It prints a table with a
fix for each missing piece and the runner labels this host would advertise.

The exit code is 0 unless --require names a TEE this host cannot run: then 3.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			switch require {
			case "", "snp", "tdx":
			default:
				return usageError(fmt.Errorf("--require %q: expected snp or tdx", require))
			}
			state, err := g.state()
			if err != nil {
				return err
			}
			if guestImage == "" {
				guestImage = host.GuestImageDir(state)
			}
			r := tee.host(state, qemu, guestImage).Check(cmd.Context())
			if asJSON {
				enc := json.NewEncoder(g.stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(r); err != nil {
					return err
				}
			} else {
				printDoctor(g, r)
			}
			return requireTEE(r, require)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&asJSON, "json", false, "print the report as JSON")
	fl.StringVar(&require, "require", "", "exit 3 unless this host can run this `TEE` (snp or tdx)")
	fl.StringVar(&qemu, "qemu", "", "QEMU binary (default qemu-system-x86_64 from PATH)")
	fl.StringVar(&guestImage, "guest-image", "", "guest image directory (default: the state directory's)")
	tee.register(cmd)
	return cmd
}

func printDoctor(g *globals, r *hostcheck.Report) {
	tw := tabwriter.NewWriter(g.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECK\tTEE\tSTATUS\tDETAIL\tFIX")
	for _, c := range r.Checks {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, c.TEE, c.Status, c.Detail, c.Fix)
	}
	tw.Flush()
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	fmt.Fprintf(g.stdout, "\nsev-snp: %s   tdx: %s   simulated: %s\n", yes(r.SNP), yes(r.TDX), yes(r.Sim))
	labels := "(none)"
	if len(r.Labels) > 0 {
		labels = strings.Join(r.Labels, ", ")
	}
	fmt.Fprintf(g.stdout, "runner labels: %s\n", labels)
}

// requireTEE fails (exitHost) when tee is set and the report says it cannot run.
func requireTEE(r *hostcheck.Report, tee string) error {
	if tee == "" {
		return nil
	}
	missing := r.Missing(tee)
	if len(missing) == 0 {
		return nil
	}
	return hostError(fmt.Errorf("%s is not available on this host: %s", strings.ToUpper(tee), host.DescribeMissing(missing)))
}
