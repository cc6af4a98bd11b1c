package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/internal/attest/simsp"
	"github.com/cloche-dev/cloche/internal/host"
)

func newSimRootCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "sim-root",
		Short: "Print the path of the simulated TEE's root certificate (created on first use)",
		Long: `The simulated TEE keeps a locally generated ARK -> ASK -> VCEK chain in the state
directory. Its root is what a verifier passes to --trusted-sim-root, together with
--allow-simulated, to accept simulated evidence. It proves nothing about the host.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			state, err := g.state()
			if err != nil {
				return err
			}
			sp, err := simsp.LoadOrCreate(host.SimTEEDir(state))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, sp.RootPath())
			return nil
		},
	}
}

func newStateDirCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state-dir",
		Short: "Print the state directory (signing key, images, simulated TEE); it is not created",
		Long: `State-dir prints the state directory this invocation uses: --state-dir, else
$CLOCHE_STATE_DIR, else /var/lib/cloche as root and ~/.local/state/cloche otherwise. The
signing key's public half is signing-key.pem.pub in it, for 'cloche verify --key'.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := g.stateDirPath()
			if dir == "" {
				return usageError(errors.New("no state directory: set --state-dir or CLOCHE_STATE_DIR (no home directory to default to)"))
			}
			fmt.Fprintln(g.stdout, dir)
			return nil
		},
	}
}
