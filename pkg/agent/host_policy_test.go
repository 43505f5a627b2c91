package agent

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/task"
)

func TestHostPolicy(t *testing.T) {
	limits := IsolationConfig{DiskMiB: LimitConfig{Default: 1024, Max: 4096}, NetworkMbps: LimitConfig{Default: 100, Max: 1000}}
	force, refuse := limits, limits
	force.RequireUserNamespace, refuse.RequireUserNamespace = UserNSForce, UserNSRefuse
	ns := map[string]string{isolation.LabelUserNS: "true"}
	for _, tc := range []struct {
		name       string
		cfg        IsolationConfig
		in         task.Spec
		want       task.Resources
		wantLabels map[string]string
		wantFields []string
	}{
		{name: "no policy, nothing changes", in: task.Spec{}, want: task.Resources{}},
		{name: "asking 0 gets the default", cfg: limits, in: task.Spec{}, want: task.Resources{DiskMiB: 1024, NetworkMbps: 100}},
		{name: "asking within the ceiling", cfg: limits, in: task.Spec{Resources: task.Resources{DiskMiB: 4096, NetworkMbps: 5}}, want: task.Resources{DiskMiB: 4096, NetworkMbps: 5}},
		{
			name: "above the ceiling", cfg: limits, in: task.Spec{Resources: task.Resources{DiskMiB: 4097, NetworkMbps: 1001}},
			want: task.Resources{DiskMiB: 4097, NetworkMbps: 1001}, wantFields: []string{"resources.disk_mib", "resources.network_mbps"},
		},
		{name: "force gives a user namespace", cfg: force, in: task.Spec{Labels: map[string]string{"a": "b"}}, want: task.Resources{DiskMiB: 1024, NetworkMbps: 100}, wantLabels: map[string]string{"a": "b", isolation.LabelUserNS: "true"}},
		{name: "refuse without one", cfg: refuse, in: task.Spec{}, want: task.Resources{DiskMiB: 1024, NetworkMbps: 100}, wantFields: []string{"labels[" + isolation.LabelUserNS + "]"}},
		{name: "refuse with one", cfg: refuse, in: task.Spec{Labels: ns}, want: task.Resources{DiskMiB: 1024, NetworkMbps: 100}, wantLabels: ns},
		{name: "no CFS quota allowed", in: task.Spec{Resources: task.Resources{CPUBurst: true}}, want: task.Resources{CPUBurst: true}},
		{name: "a CFS quota required", cfg: IsolationConfig{RequireCPUQuota: true}, in: task.Spec{Resources: task.Resources{CPUBurst: true}},
			want: task.Resources{CPUBurst: true}, wantFields: []string{"resources.cpu_burst"}},
		{name: "a CFS quota required, an allowance within it", cfg: IsolationConfig{RequireCPUQuota: true},
			in: task.Spec{Resources: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 500}}, want: task.Resources{CPUMillicores: 500, CPUBurstMillicores: 500}},
		{name: "user namespace without a disk", in: task.Spec{Labels: ns}, want: task.Resources{}, wantLabels: ns, wantFields: []string{"resources.disk_mib"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			callers := map[string]string{}
			for k, v := range tc.in.Labels {
				callers[k] = v
			}
			s := tc.in
			ck := &task.Checker{}
			hostPolicy(tc.cfg)(&s, ck)
			var fields []string
			for _, f := range ck.Fields() {
				fields = append(fields, f.Field)
			}
			if diff := cmp.Diff(tc.wantFields, fields); diff != "" {
				t.Errorf("refused fields (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tc.want, s.Resources); diff != "" {
				t.Errorf("resources (-want +got):\n%s", diff)
			}
			if tc.wantLabels != nil {
				if diff := cmp.Diff(tc.wantLabels, s.Labels); diff != "" {
					t.Errorf("labels (-want +got):\n%s", diff)
				}
			}
			if len(tc.in.Labels) > 0 && !cmp.Equal(callers, tc.in.Labels) {
				t.Errorf("the caller's labels changed: %v", tc.in.Labels)
			}
		})
	}
}

func TestHostPolicyConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		change  func(*IsolationConfig)
		wantErr string
	}{
		{name: "limits", change: func(c *IsolationConfig) {
			c.DiskMiB, c.NetworkMbps = LimitConfig{Default: 10, Max: 20}, LimitConfig{Max: 5}
		}},
		{name: "default above max", change: func(c *IsolationConfig) { c.DiskMiB = LimitConfig{Default: 30, Max: 20} }, wantErr: "isolation.diskMiB: default 30 is above max 20"},
		{name: "negative", change: func(c *IsolationConfig) { c.NetworkMbps = LimitConfig{Default: -1} }, wantErr: "isolation.networkMbps"},
		{name: "force", change: func(c *IsolationConfig) { c.RequireUserNamespace, c.DiskMiB.Default = "force", 64 }},
		{name: "force without a disk", change: func(c *IsolationConfig) { c.RequireUserNamespace = "force" }, wantErr: "needs isolation.diskMiB.default"},
		{name: "refuse without ranges", change: func(c *IsolationConfig) {
			c.RequireUserNamespace, c.DiskMiB.Default, c.UserNamespaces = "refuse", 64, UserNamespacesConfig{}
		}, wantErr: "needs isolation.userNamespaces.hostIDBase"},
		{name: "unknown", change: func(c *IsolationConfig) { c.RequireUserNamespace = "always" }, wantErr: "must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.change(&cfg.Isolation)
			err := cfg.Validate()
			if (err != nil) != (tc.wantErr != "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("Validate() = %v, want an error with %q", err, tc.wantErr)
			}
		})
	}
}
