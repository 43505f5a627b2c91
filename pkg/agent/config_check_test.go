package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/runtime"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Every value the daemon would fail on later is refused by LoadConfig
// (and so by `titus-agent config check`), naming its key.
func TestConfigRefusedAtTheDoor(t *testing.T) {
	for _, tc := range []struct {
		name string
		yaml string
		want []string // field names of the errors, in order
	}{
		{name: "defaults", yaml: ""},
		{name: "good values", yaml: "metadata:\n  credentialDuration: 45m\nnetwork:\n  dns: [198.18.0.2]\n  ec2:\n    poolReleaseAfter: 2m\n    reuseCooldown: 10s\nisolation:\n  cpuSet: 0-1,3\nscheduler:\n  address: sched.example:7443\n"},
		{name: "credential duration banana", yaml: "metadata:\n  credentialDuration: banana\n", want: []string{"metadata.credentialDuration"}},
		{name: "credential duration past STS's limit", yaml: "metadata:\n  credentialDuration: 36h\n", want: []string{"metadata.credentialDuration"}},
		{name: "negative pool durations", yaml: "network:\n  ec2:\n    poolReleaseAfter: -1m\n    reuseCooldown: soon\n", want: []string{"network.ec2.poolReleaseAfter", "network.ec2.reuseCooldown"}},
		{name: "relative paths", yaml: "stateDir: var/lib/titus\nisolation:\n  diskDir: disks\nlogs:\n  driver: titus-logger\n", want: []string{"stateDir", "logs.driver", "isolation.diskDir"}},
		{name: "empty socket", yaml: "socket: \"\"\n", want: []string{"socket"}},
		{name: "bad dns and cidr", yaml: "network:\n  dns: [dns.example]\n  local:\n    cidr: 198.19.0.0/33\n", want: []string{"network.dns[0]", "network.local.cidr"}},
		{name: "bad urls", yaml: "metadata:\n  upstream: 169.254.169.254\n  stsEndpoint: ftp://sts\nnetwork:\n  ec2:\n    endpoint: localhost:5000\n", want: []string{"network.ec2.endpoint", "metadata.upstream", "metadata.stsEndpoint"}},
		{name: "bad listen and scheduler addresses", yaml: "metricsListen: 9101\nscheduler:\n  address: sched.example\n", want: []string{"metricsListen", "scheduler.address"}},
		{name: "debug endpoint on loopback", yaml: "debugListen: 127.0.0.1:6061\n"},
		{name: "debug endpoint on ::1", yaml: "debugListen: \"[::1]:6061\"\n"},
		// Profiles and traces off the host: every address, a wildcard, a
		// name that could resolve anywhere, a v4-mapped wildcard.
		{name: "debug endpoint off the host", yaml: "debugListen: \":6061\"\n", want: []string{"debugListen"}},
		{name: "debug endpoint on 0.0.0.0", yaml: "debugListen: 0.0.0.0:6061\n", want: []string{"debugListen"}},
		{name: "debug endpoint on a name", yaml: "debugListen: debug.example:6061\n", want: []string{"debugListen"}},
		{name: "debug endpoint on a mapped wildcard", yaml: "debugListen: \"[::ffff:0.0.0.0]:6061\"\n", want: []string{"debugListen"}},
		{name: "debug endpoint on a mapped loopback", yaml: "debugListen: \"[::ffff:127.0.0.1]:6061\"\n"},
		{name: "debug endpoint with no port", yaml: "debugListen: 127.0.0.1\n", want: []string{"debugListen"}},
		{name: "scheduler replicas", yaml: "scheduler:\n  address: s1.example:7400, s2.example:7400,10.0.0.3:7400\n"},
		{name: "scheduler replicas with a bad one", yaml: "scheduler:\n  address: s1.example:7400,s2.example\n", want: []string{"scheduler.address"}},
		{name: "scheduler replicas with an empty one", yaml: "scheduler:\n  address: s1.example:7400,,s2.example:7400\n", want: []string{"scheduler.address"}},
		{name: "negative sizes", yaml: "network:\n  ec2:\n    warmIPs: -1\nscheduler:\n  networkMbps: -5\n", want: []string{"network.ec2.warmIPs", "scheduler.networkMbps"}},
		{name: "cpu set", yaml: "isolation:\n  cpuSet: two\n", want: []string{"isolation.cpuSet"}},
		{name: "plain http registry with a scheme", yaml: "registries:\n  plainHTTP: [\"http://reg:5000\"]\n", want: []string{"registries.plainHTTP[0]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "agent.yaml")
			if err := os.WriteFile(path, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := LoadConfig(path)
			var got []string
			for _, e := range flatten(err) {
				var fe *task.FieldError
				if !errors.As(e, &fe) {
					t.Errorf("error %q names no field", e)
					continue
				}
				got = append(got, fe.Field)
				if !strings.HasPrefix(e.Error(), fe.Field+": ") {
					t.Errorf("error %q does not start with its key", e)
				}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("refused fields (-want +got):\n%s\nerr: %v", diff, err)
			}
		})
	}
}

// flatten lists the errors joined in err.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func TestCgroupDriverFollowsTheInitSystem(t *testing.T) {
	for _, tc := range []struct {
		set     string
		booted  bool
		want    string
		wantErr bool
	}{
		{"", true, runtime.CgroupDriverSystemd, false},
		{"auto", true, runtime.CgroupDriverSystemd, false},
		{"auto", false, runtime.CgroupDriverCgroupfs, false},
		{"cgroupfs", true, runtime.CgroupDriverCgroupfs, false},
		{"systemd", true, runtime.CgroupDriverSystemd, false},
		{"systemd", false, "", true}, // runc would fail every create later
		{"SystemdCgroup", true, "", true},
	} {
		got, err := ContainerdConfig{CgroupDriver: tc.set}.cgroupDriver(tc.booted)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("cgroupDriver(%q, booted=%v) = %q, %v; want %q, error %v", tc.set, tc.booted, got, err, tc.want, tc.wantErr)
		}
		if err != nil && !strings.Contains(err.Error(), "containerd.cgroupDriver") {
			t.Errorf("error does not name the key: %v", err)
		}
	}
}
