package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/cloche-dev/cloche/attest"
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
			sp, err := attest.LoadOrCreateSimSP(simTEEDir(state))
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, sp.RootPath())
			return nil
		},
	}
}
