// Command go-cli is a small command-line program with third-party dependencies, built in
// the confidential VM with `cloche run --deps go`: the host fetches its modules, the guest
// checks each against go.sum before the build.
package main

import (
	"fmt"
	"os"

	"github.com/google/uuid"
	"github.com/spf13/cobra"
)

func main() {
	var namespace string
	root := &cobra.Command{
		Use:   "go-cli NAME...",
		Short: "Print the name-based (SHA-1) UUID of each NAME",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := uuid.Parse(namespace)
			if err != nil {
				return fmt.Errorf("--namespace: %w", err)
			}
			for _, name := range args {
				fmt.Fprintln(cmd.OutOrStdout(), uuid.NewSHA1(ns, []byte(name)))
			}
			return nil
		},
	}
	root.Flags().StringVar(&namespace, "namespace", uuid.NameSpaceURL.String(), "namespace UUID")
	if err := root.Execute(); err != nil {
		os.Exit(1)
	}
}
