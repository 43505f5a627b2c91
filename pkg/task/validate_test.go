package task

import (
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

func validSpec() Spec {
	s := Spec{ID: "t-1", OwnerEmail: "team@example.com", Image: "127.0.0.1:5000/busybox:latest", Command: []string{"true"}}
	s.Normalize()
	return s
}

func TestValidateNamesFieldAndRule(t *testing.T) {
	big := map[string]string{}
	for i := 0; i <= MaxEnv; i++ {
		big["K"+strings.Repeat("x", 3)+string(rune('a'+i%26))+strings.Repeat("y", i%7)+string(rune('A'+i/26%26))+string(rune('A'+i/676))] = "v"
	}
	tests := []struct {
		name   string
		mutate func(*Spec)
		fields []string
	}{
		{"valid", func(*Spec) {}, nil},
		{"no id", func(s *Spec) { s.ID = "" }, []string{"id"}},
		{"bad id", func(s *Spec) { s.ID = "../etc" }, []string{"id"}},
		{"long id", func(s *Spec) { s.ID = strings.Repeat("a", MaxIDLen+1) }, []string{"id"}},
		{"no owner", func(s *Spec) { s.OwnerEmail = "" }, []string{"owner_email"}},
		{"bad owner", func(s *Spec) { s.OwnerEmail = "Bob <bob@example.com>" }, []string{"owner_email"}},
		{"no image", func(s *Spec) { s.Image = "" }, []string{"image"}},
		{"image space", func(s *Spec) { s.Image = "a b" }, []string{"image"}},
		{"image reference grammar", func(s *Spec) { s.Image = "UPPER/Case::bad" }, []string{"image"}},
		{"image digest", func(s *Spec) { s.Image = "registry.example/x@sha256:" + strings.Repeat("ab", 32) }, nil},
		{"image short name", func(s *Spec) { s.Image = "busybox" }, nil},
		{"cpu zero", func(s *Spec) { s.Resources.CPUMillicores = -1 }, []string{"resources.cpu_millicores"}},
		{"burst allowance up to the quota", func(s *Spec) { s.Resources.CPUMillicores, s.Resources.CPUBurstMillicores = 500, 500 }, nil},
		// A tenant asking a burst above its quota would get more than it
		// pays for (and the kernel refuses burst > quota at create).
		{"burst allowance above the quota", func(s *Spec) { s.Resources.CPUMillicores, s.Resources.CPUBurstMillicores = 500, 501 }, []string{"resources.cpu_burst_millicores"}},
		{"burst allowance negative", func(s *Spec) { s.Resources.CPUBurstMillicores = -1 }, []string{"resources.cpu_burst_millicores"}},
		{"burst allowance without a quota", func(s *Spec) { s.Resources.CPUBurst, s.Resources.CPUBurstMillicores = true, 100 }, []string{"resources.cpu_burst_millicores"}},
		{"memory tiny", func(s *Spec) { s.Resources.MemoryMiB = 1 }, []string{"resources.memory_mib"}},
		{"negative disk", func(s *Spec) { s.Resources.DiskMiB = -5 }, []string{"resources.disk_mib"}},
		{"too many gpus", func(s *Spec) { s.Resources.GPUs = MaxGPUs + 1 }, []string{"resources.gpus"}},
		{"env key", func(s *Spec) { s.Env = map[string]string{"1BAD": "x"} }, []string{"env[1BAD]"}},
		{"env count", func(s *Spec) { s.Env = big }, []string{"env"}},
		{"arg NUL", func(s *Spec) { s.Command = []string{"a\x00b"} }, []string{"command[0]"}},
		{"too many args", func(s *Spec) { s.Command = make([]string, MaxArgs+1) }, []string{"command"}},
		{"label reserved", func(s *Spec) { s.Labels = map[string]string{"titus.agent/x": "y"} }, []string{"labels[titus.agent/x]"}},
		{"label value", func(s *Spec) { s.Labels = map[string]string{"k": strings.Repeat("v", MaxLabelValueLen+1)} }, []string{"labels[k]"}},
		{"log ship not a bool", func(s *Spec) { s.Labels = map[string]string{LabelLogShip: "no"} }, []string{"labels[titus.logs/ship]"}},
		{"log cap not a number", func(s *Spec) { s.Labels = map[string]string{LabelLogShipMaxMiB: "10Mi"} }, []string{"labels[titus.logs/max-mib]"}},
		{"log cap zero", func(s *Spec) { s.Labels = map[string]string{LabelLogShipMaxMiB: "0"} }, []string{"labels[titus.logs/max-mib]"}},
		{"log cap too big", func(s *Spec) { s.Labels = map[string]string{LabelLogShipMaxMiB: "9999999999"} }, []string{"labels[titus.logs/max-mib]"}},
		{"grace", func(s *Spec) { s.KillGracePeriod = 2 * MaxKillGrace }, []string{"kill_grace_period_seconds"}},
		{"runtime", func(s *Spec) { s.MaxRuntime = -time.Second }, []string{"max_runtime_seconds"}},
		{"role", func(s *Spec) { s.IAMRoleARN = "role/x" }, []string{"iam_role_arn"}},
		{"role name 512", func(s *Spec) { s.IAMRoleARN = "arn:aws:iam::123456789012:role/" + strings.Repeat("r", 512) }, nil},
		{"role name 513", func(s *Spec) { s.IAMRoleARN = "arn:aws:iam::123456789012:role/" + strings.Repeat("r", 513) }, []string{"iam_role_arn"}},
		{"sg", func(s *Spec) { s.Network.SecurityGroupIDs = []string{"sg-1", "nope"} }, []string{"network.security_group_ids[1]"}},
		{"sg dup", func(s *Spec) { s.Network.SecurityGroupIDs = []string{"sg-1", "sg-1"} }, []string{"network.security_group_ids[1]"}},
		{"subnet", func(s *Spec) { s.Network.SubnetIDs = []string{"x"} }, []string{"network.subnet_ids[0]"}},
		{"two at once", func(s *Spec) { s.OwnerEmail = ""; s.Image = "" }, []string{"owner_email", "image"}},
		{"health http ok", func(s *Spec) { s.HealthCheck = httpCheck() }, nil},
		{"health tcp ok", func(s *Spec) { h := httpCheck(); h.Kind, h.Path = HealthTCP, ""; s.HealthCheck = h }, nil},
		{"health exec ok", func(s *Spec) { s.HealthCheck = execCheck() }, nil},
		{"health interval 0", func(s *Spec) { h := httpCheck(); h.Interval = 0; s.HealthCheck = h }, []string{"health_check.interval", "health_check.timeout"}},
		{"health interval sub-second", func(s *Spec) {
			h := httpCheck()
			h.Interval, h.Timeout = time.Millisecond, time.Millisecond
			s.HealthCheck = h
		}, []string{"health_check.interval"}},
		{"health timeout over interval", func(s *Spec) { h := httpCheck(); h.Timeout = 2 * h.Interval; s.HealthCheck = h }, []string{"health_check.timeout"}},
		{"health timeout 0", func(s *Spec) { h := httpCheck(); h.Timeout = 0; s.HealthCheck = h }, []string{"health_check.timeout"}},
		{"health unknown kind", func(s *Spec) { h := httpCheck(); h.Kind = "grpc"; s.HealthCheck = h }, []string{"health_check.kind"}},
		{"health no kind", func(s *Spec) { h := httpCheck(); h.Kind = ""; s.HealthCheck = h }, []string{"health_check.kind"}},
		{"health port 0", func(s *Spec) { h := httpCheck(); h.Port = 0; s.HealthCheck = h }, []string{"health_check.port"}},
		{"health port 65536", func(s *Spec) { h := httpCheck(); h.Kind, h.Path, h.Port = HealthTCP, "", 65536; s.HealthCheck = h }, []string{"health_check.port"}},
		{"health thresholds 0", func(s *Spec) { h := httpCheck(); h.HealthyThreshold, h.UnhealthyThreshold = 0, -1; s.HealthCheck = h },
			[]string{"health_check.healthy_threshold", "health_check.unhealthy_threshold"}},
		{"health threshold huge", func(s *Spec) { h := httpCheck(); h.UnhealthyThreshold = MaxHealthThreshold + 1; s.HealthCheck = h }, []string{"health_check.unhealthy_threshold"}},
		{"health start period negative", func(s *Spec) { h := httpCheck(); h.StartPeriod = -time.Second; s.HealthCheck = h }, []string{"health_check.start_period"}},
		{"health status", func(s *Spec) { h := httpCheck(); h.ExpectedStatus = 999; s.HealthCheck = h }, []string{"health_check.expected_status"}},
		// An attacker's http check: a full URL to another host, a header
		// injection, a protocol-relative path. The check only ever asks
		// the task's own IP, and the path must be a plain path.
		{"health path URL", func(s *Spec) { h := httpCheck(); h.Path = "http://169.254.169.254/latest"; s.HealthCheck = h }, []string{"health_check.path"}},
		{"health path CRLF", func(s *Spec) { h := httpCheck(); h.Path = "/x\r\nHost: evil"; s.HealthCheck = h }, []string{"health_check.path"}},
		{"health path //host", func(s *Spec) { h := httpCheck(); h.Path = "//10.0.0.1/"; s.HealthCheck = h }, []string{"health_check.path"}},
		{"health exec no command", func(s *Spec) { h := execCheck(); h.Command = nil; s.HealthCheck = h }, []string{"health_check.command"}},
		{"health exec NUL", func(s *Spec) { h := execCheck(); h.Command = []string{"a\x00"}; s.HealthCheck = h }, []string{"health_check.command[0]"}},
		{"health exec huge", func(s *Spec) {
			h := execCheck()
			h.Command = []string{strings.Repeat("x", MaxHealthCommandBytes+1)}
			s.HealthCheck = h
		}, []string{"health_check.command"}},
		{"health exec with port", func(s *Spec) { h := execCheck(); h.Port = 80; s.HealthCheck = h }, []string{"health_check.kind"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := validSpec()
			tt.mutate(&s)
			err := s.Validate()
			var got []string
			if err != nil {
				if !errors.Is(err, ErrInvalidSpec) {
					t.Fatalf("error %v does not wrap ErrInvalidSpec", err)
				}
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("error %T is not a *ValidationError", err)
				}
				for _, f := range ve.Fields {
					got = append(got, f.Field)
					if f.Rule == "" {
						t.Errorf("field %s has no rule", f.Field)
					}
				}
			}
			if diff := cmp.Diff(tt.fields, got); diff != "" {
				t.Errorf("fields (-want +got):\n%s", diff)
			}
		})
	}
}

func httpCheck() *HealthCheck {
	return &HealthCheck{Kind: HealthHTTP, Path: "/healthz", Port: 8080, Interval: time.Second, Timeout: time.Second, HealthyThreshold: 1, UnhealthyThreshold: 3}
}

func execCheck() *HealthCheck {
	return &HealthCheck{Kind: HealthExec, Command: []string{"true"}, Interval: 5 * time.Second, Timeout: time.Second, HealthyThreshold: 2, UnhealthyThreshold: 2}
}

func TestStateOnlyMovesForward(t *testing.T) {
	now := time.Unix(100, 0)
	var s Status
	for _, st := range []State{Accepted, Preparing, Starting, Running, Killing, Killed} {
		if _, err := s.Advance(st, ReasonNone, "", now); err != nil {
			t.Fatalf("advance to %s: %v", st, err)
		}
	}
	if _, err := s.Advance(Running, ReasonNone, "", now); !errors.Is(err, ErrBackwardTransition) {
		t.Fatalf("backward transition allowed: %v", err)
	}
	if _, err := s.Advance(Lost, ReasonNone, "", now); !errors.Is(err, ErrBackwardTransition) {
		t.Fatalf("left a terminal state: %v", err)
	}
	if got := len(s.Transitions); got != 6 {
		t.Fatalf("transitions = %d, want 6", got)
	}
}

func TestProtoRoundTrip(t *testing.T) {
	s := validSpec()
	s.Env = map[string]string{"A": "1"}
	s.Labels = map[string]string{"app": "x"}
	s.Network = NetworkRequest{SecurityGroupIDs: []string{"sg-1"}, SubnetIDs: []string{"subnet-1"}}
	s.MaxRuntime = time.Minute
	s.HealthCheck = httpCheck()
	s.HealthCheck.StartPeriod = 90 * time.Second
	got := FromProto(ToProto(&s))
	if diff := cmp.Diff(&s, got); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
}

// Wire seconds a Duration cannot hold are refused by name, not wrapped
// around into range (or into a sentinel).
func TestFromProtoOutOfRangeSeconds(t *testing.T) {
	for _, tc := range []struct {
		name       string
		grace, max int64
		wantGrace  time.Duration
		wantMax    time.Duration
		wantFields []string
	}{
		{"in range", 30, 3600, 30 * time.Second, time.Hour, nil},
		{"just past the limits", int64(MaxKillGrace/time.Second) + 1, int64(MaxRuntimeLimit/time.Second) + 1,
			MaxKillGrace + time.Second, MaxRuntimeLimit + time.Second, []string{"kill_grace_period_seconds", "max_runtime_seconds"}},
		// 2^62 s times 10^9 would wrap around to a small positive Duration.
		{"past what a Duration holds", 1 << 62, math.MaxInt64, math.MaxInt64, math.MaxInt64, []string{"kill_grace_period_seconds", "max_runtime_seconds"}},
		{"negative", -1, math.MinInt64, -time.Second, math.MinInt64, []string{"kill_grace_period_seconds", "max_runtime_seconds"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := ToProto(&Spec{ID: "t-1", OwnerEmail: "team@example.com", Image: "img", Command: []string{"true"}})
			p.KillGracePeriodSeconds, p.MaxRuntimeSeconds = tc.grace, tc.max
			s := FromProto(p)
			if s.KillGracePeriod != tc.wantGrace || s.MaxRuntime != tc.wantMax {
				t.Errorf("grace %v, max runtime %v; want %v, %v", s.KillGracePeriod, s.MaxRuntime, tc.wantGrace, tc.wantMax)
			}
			s.Normalize()
			var got []string
			var ve *ValidationError
			if err := s.Validate(); errors.As(err, &ve) {
				for _, f := range ve.Fields {
					got = append(got, f.Field)
				}
			}
			if diff := cmp.Diff(tc.wantFields, got); diff != "" {
				t.Errorf("refused fields (-want +got):\n%s", diff)
			}
		})
	}
}

// Spec files and records write health check durations as "10s".
func TestHealthCheckJSON(t *testing.T) {
	h := httpCheck()
	h.StartPeriod = 30 * time.Second
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"kind":"http","path":"/healthz","port":8080,"healthyThreshold":1,"unhealthyThreshold":3,"interval":"1s","timeout":"1s","startPeriod":"30s"}`
	if string(b) != want {
		t.Fatalf("json:\n got %s\nwant %s", b, want)
	}
	var back HealthCheck
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(h, &back); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
	if err := json.Unmarshal([]byte(`{"kind":"tcp","interval":"soon"}`), &back); err == nil || !strings.Contains(err.Error(), "healthCheck.interval") {
		t.Fatalf("bad duration: %v", err)
	}
}

func TestTruncateOutput(t *testing.T) {
	long := strings.Repeat("é", MaxHealthOutput)
	got := TruncateOutput(long)
	if len(got) > MaxHealthOutput || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Fatalf("truncated to %d bytes, valid %v", len(got), utf8.ValidString(got))
	}
	if TruncateOutput("ok") != "ok" {
		t.Fatal("short output changed")
	}
}

func TestLogShippingOf(t *testing.T) {
	got, fe := LogShippingOf(map[string]string{LabelLogShip: "false", LabelLogShipMaxMiB: "3"})
	if fe != nil || !got.OptOut || got.MaxBytes != 3<<20 {
		t.Errorf("LogShippingOf = %+v, %v", got, fe)
	}
	if got, fe := LogShippingOf(nil); fe != nil || got != (LogShipping{}) {
		t.Errorf("LogShippingOf(nil) = %+v, %v", got, fe)
	}
	if _, fe := LogShippingOf(map[string]string{LabelLogShip: "yes"}); fe == nil || !strings.Contains(fe.Error(), `must be "true" or "false", got "yes"`) {
		t.Errorf("bad opt-out error = %v", fe)
	}
}
