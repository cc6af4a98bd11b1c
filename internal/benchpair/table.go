package benchpair

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
)

// Row is one line of the benchmark table: a metric, cloche's figure and the baseline's
// (when there is one) with their ratio, and the goal.
type Row struct {
	Metric             string
	Cloche, Baseline   float64
	Unit               string
	Ratio, Spread      float64
	HasBaseline        bool
	Goal               string // e.g. "<= 1.1" on the ratio, or on the value without a baseline
	GoalMet, GoalGiven bool
}

// benchLine is `BenchmarkName[-P]  N  v1 unit1  v2 unit2 ...` from go test -bench.
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

// Parse reads go test -bench output and returns its rows: one per benchpair prefix
// (PREFIX-s, PREFIX-baseline-s, PREFIX-ratio, PREFIX-ratio-spread), one per pair of
// sibling sub-benchmarks NAME/cloche and NAME/OTHER (ns/op, same run, not interleaved),
// and one per other metric of a benchmark.
func Parse(r io.Reader) ([]Row, error) {
	metrics := map[string]map[string]float64{}
	var order []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		f := strings.Fields(m[2])
		if len(f)%2 != 0 {
			continue
		}
		if _, ok := metrics[m[1]]; !ok {
			order = append(order, m[1])
			metrics[m[1]] = map[string]float64{}
		}
		for i := 0; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err == nil {
				metrics[m[1]][f[i+1]] = v
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var rows []Row
	paired := map[string]bool{}
	for _, name := range order {
		if parent, ok := strings.CutSuffix(name, "/cloche"); ok {
			for _, other := range order {
				if strings.HasPrefix(other, parent+"/") && other != name && !strings.Contains(strings.TrimPrefix(other, parent+"/"), "/") {
					c, b := metrics[name]["ns/op"], metrics[other]["ns/op"]
					rows = append(rows, Row{Metric: parent + " vs " + strings.TrimPrefix(other, parent+"/"), Cloche: c / 1e6, Baseline: b / 1e6,
						Unit: "ms", Ratio: c / max(b, 1), HasBaseline: true})
					paired[name], paired[other] = true, true
				}
			}
		}
	}
	for _, name := range order {
		rows = append(rows, rowsOf(name, metrics[name], paired[name])...)
	}
	return rows, nil
}

// rowsOf turns one benchmark's metrics into rows.
func rowsOf(name string, m map[string]float64, paired bool) []Row {
	var rows []Row
	used := map[string]bool{}
	for unit, v := range m {
		prefix, ok := strings.CutSuffix(unit, "-baseline-s")
		if !ok {
			continue
		}
		rows = append(rows, Row{Metric: name + "/" + prefix, Cloche: m[prefix+"-s"], Baseline: v, Unit: "s",
			Ratio: m[prefix+"-ratio"], Spread: m[prefix+"-ratio-spread"], HasBaseline: true})
		for _, u := range []string{"-s", "-baseline-s", "-ratio", "-ratio-spread"} {
			used[prefix+u] = true
		}
	}
	var units []string
	for unit := range m {
		if !used[unit] && !(paired && unit == "ns/op") && unit != "B/op" && unit != "allocs/op" {
			units = append(units, unit)
		}
	}
	sort.Strings(units)
	for _, u := range units {
		if u == "ns/op" && len(rows) > 0 {
			continue // the per-iteration time of a paired benchmark says nothing alone
		}
		rows = append(rows, Row{Metric: name, Cloche: m[u], Unit: u})
	}
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].HasBaseline && !rows[j].HasBaseline })
	return rows
}

// ApplyGoals sets each row's goal from goals (metric → "<= X" or ">= X"), which apply to
// the ratio when the row has a baseline and to the value otherwise. A key "METRIC UNIT"
// names one of a benchmark's several metrics; it is preferred to the bare METRIC.
func ApplyGoals(rows []Row, goals map[string]string) error {
	for i := range rows {
		g, ok := goals[rows[i].Metric+" "+rows[i].Unit]
		if !ok {
			g, ok = goals[rows[i].Metric]
		}
		if !ok {
			continue
		}
		op, num, _ := strings.Cut(strings.TrimSpace(g), " ")
		want, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
		if err != nil || (op != "<=" && op != ">=") {
			return fmt.Errorf("goal %q for %s: expected \"<= X\" or \">= X\"", g, rows[i].Metric)
		}
		v := rows[i].Cloche
		if rows[i].HasBaseline {
			v = rows[i].Ratio
		}
		rows[i].Goal, rows[i].GoalGiven = g, true
		rows[i].GoalMet = (op == "<=" && v <= want) || (op == ">=" && v >= want)
	}
	return nil
}

// ParseGoals reads lines "METRIC<TAB>GOAL" (# comments, blank lines ignored).
func ParseGoals(r io.Reader) (map[string]string, error) {
	goals := map[string]string{}
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		metric, goal, ok := strings.Cut(line, "\t")
		if !ok {
			return nil, fmt.Errorf("goals line %d: expected METRIC<TAB>GOAL", n)
		}
		goals[strings.TrimSpace(metric)] = strings.TrimSpace(goal)
	}
	return goals, sc.Err()
}

// WriteTable prints the rows as one table: metric, cloche, baseline, ratio (spread), goal.
func WriteTable(w io.Writer, rows []Row) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "metric\tcloche\tbaseline\tratio (spread)\tgoal\t")
	for _, r := range rows {
		base, ratio := "-", "-"
		if r.HasBaseline {
			base = fmt.Sprintf("%.4g %s", r.Baseline, r.Unit)
			ratio = fmt.Sprintf("%.3g", r.Ratio)
			if r.Spread != 0 {
				ratio += fmt.Sprintf(" (±%.2g)", r.Spread/2)
			}
		}
		goal := "-"
		if r.GoalGiven {
			goal = r.Goal + " met"
			if !r.GoalMet {
				goal = r.Goal + " NOT met"
			}
		}
		fmt.Fprintf(tw, "%s\t%.4g %s\t%s\t%s\t%s\t\n", r.Metric, r.Cloche, r.Unit, base, ratio, goal)
	}
	return tw.Flush()
}
