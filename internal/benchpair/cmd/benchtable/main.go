// Command benchtable reads `go test -bench` output on stdin and prints `make bench`'s one
// table (metric, cloche, baseline, ratio, goal), with the goals from the file named by its
// argument (bench/goals.tsv).
package main

import (
	"fmt"
	"os"

	"github.com/cloche-dev/cloche/internal/benchpair"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}

func run() error {
	rows, err := benchpair.Parse(os.Stdin)
	if err != nil {
		return err
	}
	if len(os.Args) > 1 {
		f, err := os.Open(os.Args[1])
		if err != nil {
			return err
		}
		defer f.Close()
		goals, err := benchpair.ParseGoals(f)
		if err != nil {
			return err
		}
		if err := benchpair.ApplyGoals(rows, goals); err != nil {
			return err
		}
	}
	return benchpair.WriteTable(os.Stdout, rows)
}
