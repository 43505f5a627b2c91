package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/unit"
	"github.com/google/go-cmp/cmp"
)

var unitFiles = []string{"titus-agent.service", "titus-agent.socket", "titus-scheduler.service"}

// repoRoot is the module root (tests run in test/integration).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repo root: %v", err)
	}
	return root
}

// run runs a command bounded in time and returns its stdout; stderr goes
// into the error.
func run(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return stdout.String(), stderr.String(), err
}

// verifyUnits runs systemd-analyze verify on dir's units; any warning fails
// (systemd-analyze exits 0 on unknown keys and bad values, only warning).
func verifyUnits(t *testing.T, units ...string) {
	t.Helper()
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Fatalf("systemd-analyze is required (apt-get install systemd): %v", err)
	}
	args := []string{"verify", "--man=no"}
	_, stderr, err := run(t, time.Minute, "", nil, "systemd-analyze", append(args, units...)...)
	if err != nil {
		t.Fatal(err)
	}
	// Lines about the host's own units (e.g. syscall names this systemd
	// does not know) are not ours.
	for _, line := range strings.Split(strings.TrimSpace(stderr), "\n") {
		if line != "" && strings.Contains(line, "titus") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

// TestSystemdUnitsVerify checks the unit files with systemd-analyze, with
// ExecStart pointing at an existing binary and a stand-in containerd unit.
func TestSystemdUnitsVerify(t *testing.T) {
	begin(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	verifyUnitDir(t, filepath.Join(repoRoot(t), "systemd"), self, self)
}

// verifyUnitDir verifies the units in src, copied with ExecStart pointing
// at the given binaries, next to a stand-in containerd.service.
func verifyUnitDir(t *testing.T, src, agentBin, schedulerBin string) {
	t.Helper()
	dir := t.TempDir()
	var paths []string
	for _, name := range unitFiles {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.NewReplacer("/usr/bin/titus-agent", agentBin, "/usr/bin/titus-scheduler", schedulerBin).Replace(string(b))
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	stub := "[Unit]\nDescription=stand-in containerd\n[Service]\nExecStart=" + agentBin + "\n"
	if err := os.WriteFile(filepath.Join(dir, "containerd.service"), []byte(stub), 0o644); err != nil {
		t.Fatal(err)
	}
	verifyUnits(t, paths...)
}

// TestSystemdUnitsContract pins the directives the agent's operation
// depends on: readiness, watchdog, restart, and never killing tasks.
func TestSystemdUnitsContract(t *testing.T) {
	begin(t)
	root := repoRoot(t)
	want := map[string]map[string]string{
		"titus-agent.service": {
			"Unit.Requires":        "containerd.service titus-agent.socket",
			"Service.Type":         "notify",
			"Service.NotifyAccess": "main",
			"Service.WatchdogSec":  "30s",
			"Service.Restart":      "always",
			"Service.KillMode":     "process",
			"Service.ExecStart":    "/usr/bin/titus-agent daemon --config /etc/titus-agent/agent.yaml",
			"Service.LimitNOFILE":  "1048576",
			// A private mount namespace would hide the agent's netns and
			// disk mounts from containerd and runc.
			"Service.ProtectSystem":    "",
			"Service.ProtectHome":      "",
			"Service.PrivateTmp":       "",
			"Service.PrivateDevices":   "",
			"Service.ProtectClock":     "",
			"Service.RuntimeDirectory": "",
			"Install.WantedBy":         "multi-user.target",
		},
		"titus-agent.socket": {
			"Unit.PartOf":         "",
			"Socket.ListenStream": "/run/titus-agent/agent.sock",
			"Socket.SocketMode":   "0660",
			"Socket.SocketGroup":  "titus",
			"Install.WantedBy":    "sockets.target",
		},
		"titus-scheduler.service": {
			"Service.Restart":   "always",
			"Service.Type":      "notify",
			"Service.ExecStart": "/usr/bin/titus-scheduler serve --config /etc/titus-scheduler/scheduler.yaml",
		},
	}
	for name, keys := range want {
		t.Run(name, func(t *testing.T) {
			f, err := os.Open(filepath.Join(root, "systemd", name))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			opts, err := unit.DeserializeOptions(f)
			if err != nil {
				t.Fatalf("parse %s: %v", name, err)
			}
			got := map[string]string{}
			for _, o := range opts {
				k := o.Section + "." + o.Name
				if _, asked := keys[k]; asked {
					got[k] = strings.TrimSpace(got[k] + " " + o.Value)
				}
			}
			for k, v := range keys {
				if v == "" {
					if _, set := got[k]; !set {
						got[k] = ""
					}
				}
			}
			if diff := cmp.Diff(keys, got); diff != "" {
				t.Errorf("%s directives (-want +got):\n%s", name, diff)
			}
		})
	}
}

// TestDebPackage builds the .deb with `make deb` and checks its contents,
// control data, conffiles and maintainer scripts, then verifies the units
// as installed from it.
func TestDebPackage(t *testing.T) {
	begin(t)
	root := repoRoot(t)
	for _, tool := range []string{"make", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is required: %v", tool, err)
		}
	}
	dist := t.TempDir()
	version := fmt.Sprintf("0.0.0~test%d", os.Getpid())
	if _, _, err := run(t, 10*time.Minute, root, nil, "make", "deb", "DIST="+dist, "VERSION="+version, "ARCH=amd64"); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dist, "titus-agent_"+version+"_amd64.deb")

	list, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-c", deb)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{} // path -> mode
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := strings.Fields(line)
		if len(f) < 6 || strings.HasSuffix(f[5], "/") {
			continue
		}
		got[strings.TrimPrefix(f[5], ".")] = f[0]
	}
	wantFiles := map[string]string{
		"/usr/bin/titus-agent":                            "-rwxr-xr-x",
		"/usr/bin/titus-logger":                           "-rwxr-xr-x",
		"/usr/bin/titus-scheduler":                        "-rwxr-xr-x",
		"/usr/lib/systemd/system/titus-agent.service":     "-rw-r--r--",
		"/usr/lib/systemd/system/titus-agent.socket":      "-rw-r--r--",
		"/usr/lib/systemd/system/titus-scheduler.service": "-rw-r--r--",
		"/etc/titus-agent/agent.yaml":                     "-rw-r--r--",
		"/etc/titus-scheduler/scheduler.yaml":             "-rw-r--r--",
		"/usr/share/doc/titus-agent/operations.md":        "-rw-r--r--",
		"/usr/share/doc/titus-agent/config.md":            "-rw-r--r--",
		"/usr/share/doc/titus-agent/slo.md":               "-rw-r--r--",
	}
	if diff := cmp.Diff(wantFiles, got); diff != "" {
		t.Errorf("package files (-want +got):\n%s", diff)
	}

	field := func(name string) string {
		t.Helper()
		out, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-f", deb, name)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(out)
	}
	if diff := cmp.Diff([]string{"titus-agent", version, "amd64"},
		[]string{field("Package"), field("Version"), field("Architecture")}); diff != "" {
		t.Errorf("control fields (-want +got):\n%s", diff)
	}
	control := func(file string) string {
		t.Helper()
		out, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-I", deb, file)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if got := strings.TrimSpace(control("conffiles")); got != "/etc/titus-agent/agent.yaml\n/etc/titus-scheduler/scheduler.yaml" {
		t.Errorf("conffiles = %q, want the agent's and the scheduler's config", got)
	}
	postinst := control("postinst")
	for _, want := range []string{"groupadd --system titus", "systemctl enable titus-agent.socket titus-agent.service"} {
		if !strings.Contains(postinst, want) {
			t.Errorf("postinst lacks %q", want)
		}
	}
	if strings.Contains(postinst, "systemctl start") || strings.Contains(postinst, "enable --now") {
		t.Error("postinst starts the agent; it must only enable it")
	}
	if prerm := control("prerm"); !strings.Contains(prerm, "disable --now titus-agent.service titus-agent.socket") {
		t.Errorf("prerm does not stop and disable the agent:\n%s", prerm)
	}

	// Installed layout: the packaged binary runs and its config checks,
	// and the units verify against the packaged binaries.
	inst := t.TempDir()
	if _, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-x", deb, inst); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(inst, "etc/titus-agent/agent.yaml")
	// socketGroup: titus need not exist on a test machine; check the rest.
	b, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	checked := filepath.Join(t.TempDir(), "agent.yaml")
	if err := os.WriteFile(checked, []byte(strings.Replace(string(b), "socketGroup: titus", "socketGroup: \"0\"", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, time.Minute, "", nil, filepath.Join(inst, "usr/bin/titus-agent"), "config", "check", "--config", checked); err != nil {
		t.Errorf("packaged config: %v", err)
	}
	verifyUnitDir(t, filepath.Join(inst, "usr/lib/systemd/system"),
		filepath.Join(inst, "usr/bin/titus-agent"), filepath.Join(inst, "usr/bin/titus-scheduler"))
}
