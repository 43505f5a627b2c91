package constraint

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "zone = us-east-1a", want: "zone = us-east-1a"},
		{in: "zone==us-east-1a", want: "zone = us-east-1a"},
		{in: "  instance.type != m5.large ", want: "instance.type != m5.large"},
		{in: "gpu.model in [H100, \"A100 80GB\"]", want: "gpu.model in [H100, A100 80GB]"},
		{in: "zone not in [a,b]", want: "zone not in [a, b]"},
		{in: "kernel >= 6.1", want: "kernel >= 6.1"},
		{in: "agent.version<2", want: "agent.version < 2"},
		{in: "ami =~ ^ami-0[0-9a-f]+$", want: "ami =~ ^ami-0[0-9a-f]+$"},
		{in: "label.team/name !~ x", want: "label.team/name !~ x"},
		{in: "label.tier = \"gold, silver\"", want: "label.tier = gold, silver"},
		{in: "cgroup = ", want: "cgroup = "},
		{in: "", err: "want \"attribute op value\""},
		{in: "zone", err: "want \"attribute op value\""},
		{in: "zone ~ a", err: "want an operator"},
		{in: "zone inside [a]", err: "want an operator"},
		{in: "colour = red", err: "unknown attribute \"colour\""},
		{in: "label. = x", err: "unknown attribute"},
		{in: "9zone = a", err: "bad attribute name"},
		{in: "zone in a, b", err: "want a list"},
		{in: "zone in []", err: "empty list"},
		{in: "zone in [a,,b]", err: "empty value"},
		{in: "zone in [" + strings.Repeat("a,", 64) + "a]", err: "more than 64 values"},
		{in: "zone = a,b", err: "quote values"},
		{in: "kernel >= ", err: "no value after >="},
		{in: "ami =~ (", err: "regex: error parsing regexp"},
		{in: "ami =~ " + strings.Repeat("a", 257), err: "regex longer than 256 bytes"},
		{in: "ami =~ ((a{100}){100})", err: "regex"},
		{in: "ami =~ [a-z]{500}[0-9]{500}", err: "regex too complex"},
		{in: "zone = " + strings.Repeat("a", 600), err: "longer than 512 bytes"},
	} {
		c, err := Parse(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrSyntax) {
				t.Errorf("Parse(%q) = %v, %v; want error with %q", tc.in, c, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("Parse(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, c.String()); diff != "" {
			t.Errorf("Parse(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestHolds(t *testing.T) {
	host := HostAttributes(HostInfo{InstanceType: "p5.48xlarge", Zone: "us-east-1a", AMI: "ami-0abc", AgentVersion: "1.4.2",
		Kernel: "6.1.0-13-cloud-amd64", Cgroup: "v2", GPUs: 8, GPUModel: "H100", GPUMemoryMiB: 81920, Labels: map[string]string{"tier": "gold"}})
	bare := HostAttributes(HostInfo{InstanceType: "m5.large", Zone: "us-east-1b"})
	type result struct{ Host, Bare bool }
	for _, tc := range []struct {
		c    string
		want result
	}{
		{"zone = us-east-1a", result{true, false}},
		{"zone != us-east-1a", result{false, true}},
		{"instance.family in [p5, p4d]", result{true, false}},
		{"instance.family not in [p5]", result{false, true}},
		{"gpu.model in [H100]", result{true, false}},     // bare lacks gpu.model
		{"gpu.model not in [H100]", result{false, true}}, // lacking passes a negative op
		{"gpu.model != A100", result{true, true}},
		{"gpu.count >= 4", result{true, false}},
		{"gpu.count = 0", result{false, true}},
		{"gpu.memoryMiB > 40000", result{true, false}},
		{"kernel >= 6.1", result{true, false}},
		{"kernel < 6.2", result{true, false}},
		{"kernel > 6.1.0", result{true, false}},
		{"agent.version >= 1.10", result{false, false}},
		{"agent.version >= 1.4", result{true, false}},
		{"ami =~ ^ami-0", result{true, false}},
		{"ami !~ ^ami-0", result{false, true}},
		{"label.tier = gold", result{true, false}},
		{"cgroup = v2", result{true, false}},
		{"instance.type =~ \\.large$", result{false, true}},
	} {
		c, err := Parse(tc.c)
		if err != nil {
			t.Fatalf("Parse(%q): %v", tc.c, err)
		}
		m := NewMatcher(c)
		got := result{m.Holds(host), m.Holds(bare)}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.c, diff)
		}
		// The cached answer is the same.
		if again := (result{m.Holds(host), m.Holds(bare)}); again != got {
			t.Errorf("%s: cached answer %v, first %v", tc.c, again, got)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"6.1", "6.1.0", 0},
		{"6.1.0-13", "6.1", 1},
		{"6.10", "6.9", 1},
		{"1.4.2", "1.10", -1},
		{"v2", "v1", 1},
		{"2", "10", -1},
		{"", "0", 0},
	} {
		if got := CompareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("CompareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}

func TestCompile(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		err  string
	}{
		{name: "empty", spec: Spec{}},
		{name: "all", spec: Spec{Constraints: []string{"zone in [a, b]"}, Preferences: []PreferenceSpec{{"label.tier = gold", 10}},
			MaxPerHost: 2, ZoneBalance: ZoneHard, InstanceFamilies: []string{"m5", "c6i"}}},
		{name: "bad hard", spec: Spec{Constraints: []string{"zone = a", "zone ~ b"}}, err: "placement.constraints[1]: constraint syntax"},
		{name: "bad pref", spec: Spec{Preferences: []PreferenceSpec{{"nope = 1", 1}}}, err: "placement.preferences[0].constraint: constraint syntax: unknown attribute"},
		{name: "weight", spec: Spec{Preferences: []PreferenceSpec{{"zone = a", 101}}}, err: "placement.preferences[0].weight: 101 not in 1..100"},
		{name: "negative weight", spec: Spec{Preferences: []PreferenceSpec{{"zone = a", -1}}}, err: "placement.preferences[0].weight"},
		{name: "family", spec: Spec{InstanceFamilies: []string{"m5", "M5.large"}}, err: "placement.instance_families[1]"},
		{name: "unique and max", spec: Spec{UniqueHost: true, MaxPerHost: 3}, err: "placement.unique_host: contradicts max_per_host 3"},
		{name: "zone", spec: Spec{ZoneBalance: 7}, err: "placement.zone_balance: unknown value 7"},
		{name: "too many", spec: Spec{Constraints: make([]string, 17)}, err: "placement.constraints: at most 16"},
		{name: "too many regexes", spec: Spec{Constraints: []string{"ami =~ a", "ami =~ b", "ami =~ c", "ami =~ d", "ami =~ e"},
			Preferences: []PreferenceSpec{{"ami =~ f", 1}, {"ami =~ g", 1}, {"ami =~ h", 1}, {"ami !~ i", 1}}}, err: "at most 8 regex"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.spec)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Compile = %v, want error with %q", err, tc.err)
			}
		})
	}
}

func TestPlacementEval(t *testing.T) {
	p, err := Compile(Spec{Constraints: []string{"zone in [a, b]"}, InstanceFamilies: []string{"m5"},
		Preferences: []PreferenceSpec{{"label.tier = gold", 10}, {"zone = a", 1}}, UniqueHost: true})
	if err != nil {
		t.Fatal(err)
	}
	hosts := []map[string]string{
		HostAttributes(HostInfo{InstanceType: "m5.large", Zone: "a", Labels: map[string]string{"tier": "gold"}}),
		HostAttributes(HostInfo{InstanceType: "m5.large", Zone: "b"}),
		HostAttributes(HostInfo{InstanceType: "c5.large", Zone: "a"}),
		HostAttributes(HostInfo{InstanceType: "m5.large", Zone: "c"}),
		HostAttributes(HostInfo{Zone: "c"}),
	}
	type res struct {
		Allows bool
		Pref   int
	}
	var got []res
	for _, h := range hosts {
		got = append(got, res{p.Allows(h), p.Preference(h)})
	}
	want := []res{{true, 11}, {true, 0}, {false, 1}, {false, 0}, {false, 0}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if p.MaxPerHost != 1 {
		t.Errorf("MaxPerHost = %d, want 1 (unique host)", p.MaxPerHost)
	}
	ex, ok := p.WorstExclusion(hosts)
	if diff := cmp.Diff(Exclusion{Constraint: p.Hard[0].C, Other: 2}, ex, cmp.AllowUnexported(Constraint{})); diff != "" || !ok {
		t.Errorf("WorstExclusion (-want +got):\n%s", diff)
	}
}
