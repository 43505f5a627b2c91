// Package integration holds end-to-end tests on real components: containerd
// and runc, a Docker Distribution registry, moto, the AWS IMDS mock and real
// network namespaces. They need root and the tools `make deps` installs;
// anything missing fails the run loudly.
//
// Every test calls begin(t) first. It counts the test, and TestMain prints
// `INTEGRATION: N tests ran, M failed` at the end, so a run where tests
// silently did nothing is visible; last of all its cleanups it removes the
// nftables tables whose device is gone.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containerd/log"

	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

var testsRan, testsFailed atomic.Int64

// begin registers t with the run's counters. Call it first in every test.
func begin(t *testing.T) {
	t.Helper()
	testsRan.Add(1)
	t.Cleanup(func() {
		if t.Failed() {
			testsFailed.Add(1)
		}
		removeStaleTables()
	})
}

// removeStaleTables runs last in every test (after its containerd is
// gone): a task still running when its test ended loses its veth with
// its netns, not its source guard table, nor a gone bridge its tables.
// It removes what has no device left, as the next agent start would;
// another test's live tables always have theirs.
func removeStaleTables() {
	if fw, err := vpc.NewFirewall(vpc.FirewallConfig{Table: "titus_fw_none"}); err == nil {
		_, _ = fw.RemoveStale(context.Background())
	}
}

// prerequisites are the binaries the suite runs for real.
var prerequisites = []string{
	"containerd", "containerd-shim-runc-v2", "runc", "docker-registry", "busybox", "moto_server", "ec2-metadata-mock",
}

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "integration tests must run as root")
		os.Exit(2)
	}
	var missing []string
	without := map[string]bool{}
	if w := os.Getenv("TITUS_INTEGRATION_WITHOUT"); w != "" {
		// The VM lane's guest has no moto: it runs only tests that do not
		// need it, and a test that does still fails at its own LookPath.
		for _, p := range strings.Split(w, ",") {
			without[p] = true
		}
		fmt.Printf("INTEGRATION: not checked up front (TITUS_INTEGRATION_WITHOUT): %s\n", w)
	}
	for _, p := range prerequisites {
		if !without[p] && !found(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(os.Stderr, "integration prerequisites missing: %v (run `make deps`)\n", missing)
		os.Exit(2)
	}
	// containerd's client logs routine retries (404s, HTTPS fallbacks) at
	// info level through logrus; keep test output to what matters.
	_ = log.SetLevel("warn")
	code := m.Run()
	testenv.RemoveBuilt()
	fmt.Printf("INTEGRATION: %d tests ran, %d failed\n", testsRan.Load(), testsFailed.Load())
	if code == 0 && testsRan.Load() == 0 && !listing() {
		fmt.Fprintln(os.Stderr, "INTEGRATION: no test called begin(t); refusing to pass an empty run")
		code = 1
	}
	os.Exit(code)
}

// listing reports whether the run only lists tests (-test.list).
func listing() bool {
	for _, a := range os.Args {
		if strings.HasPrefix(a, "-test.list") {
			return true
		}
	}
	return false
}

func found(name string) bool {
	if st, err := os.Stat(filepath.Join(testenv.CacheBin(), name)); err == nil && st.Mode()&0o111 != 0 {
		return true
	}
	_, err := exec.LookPath(name)
	return err == nil
}
