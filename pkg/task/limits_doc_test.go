package task

import (
	"fmt"
	"os"
	"regexp"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// docs/task-spec.md lists every limit with its value.
func TestLimitsDocumented(t *testing.T) {
	want := map[string]string{}
	for name, v := range map[string]any{
		"MaxIDLen": MaxIDLen, "MaxImageRefLen": MaxImageRefLen, "MaxArgs": MaxArgs, "MaxArgLen": MaxArgLen,
		"MaxCommandBytes": MaxCommandBytes, "MaxEnv": MaxEnv, "MaxEnvKeyLen": MaxEnvKeyLen,
		"MaxEnvValueLen": MaxEnvValueLen, "MaxEnvBytes": MaxEnvBytes, "MaxLabels": MaxLabels,
		"MaxLabelKeyLen": MaxLabelKeyLen, "MaxLabelValueLen": MaxLabelValueLen,
		"MaxSecurityGroups": MaxSecurityGroups, "MaxSubnets": MaxSubnets, "MaxCPUMillicores": MaxCPUMillicores,
		"MinMemoryMiB": MinMemoryMiB, "MaxMemoryMiB": MaxMemoryMiB, "MaxDiskMiB": MaxDiskMiB,
		"MaxNetworkMbps": MaxNetworkMbps, "MaxGPUs": MaxGPUs, "MaxPids": MaxPids,
		"MaxKillGrace": MaxKillGrace, "MaxRuntimeLimit": MaxRuntimeLimit,
		"MinHealthInterval": MinHealthInterval, "MaxHealthInterval": MaxHealthInterval, "MaxHealthStartPeriod": MaxHealthStartPeriod,
		"MaxHealthThreshold": MaxHealthThreshold, "MaxHealthPathLen": MaxHealthPathLen, "MaxHealthCommandBytes": MaxHealthCommandBytes,
		"MaxHealthOutput": MaxHealthOutput,
		"MaxSecrets":      MaxSecrets, "MaxSecretNameLen": MaxSecretNameLen, "MaxSecretFromLen": MaxSecretFromLen,
		"MaxSecretPathLen": MaxSecretPathLen, "MaxSecretPathDepth": MaxSecretPathDepth, "MaxSecretBytes": MaxSecretBytes,
		"MaxSecretsTotalBytes": MaxSecretsTotalBytes, "MaxLogShipMiB": MaxLogShipMiB,
	} {
		want[name] = fmt.Sprint(v)
	}
	b, err := os.ReadFile("../../docs/task-spec.md")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, m := range regexp.MustCompile("(?m)^\\| `(M(?:ax|in)\\w+)` \\| ([^ |]+) \\|$").FindAllStringSubmatch(string(b), -1) {
		got[m[1]] = m[2]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("docs/task-spec.md limits (-code +doc):\n%s", diff)
	}
}
