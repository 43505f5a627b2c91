//go:build vmguest

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// This file is built only into the VM lane's test binary (`go test -c -tags
// vmguest`, see test/vm/run.sh): it drives the guest's own systemd (PID 1)
// and installs the project's .deb into the guest's root, which is a
// throwaway snapshot. It must never run on a developer's host.

// sysd runs a command in the guest and fails the test on error.
func sysd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func unitProp(t *testing.T, unit, prop string) string {
	t.Helper()
	return sysd(t, "systemctl", "show", "--value", "-p", prop, unit)
}

func vmWaitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			j, _ := exec.Command("journalctl", "--no-pager", "-n", "60", "-u", "titus-agent.service", "-u", "containerd.service").CombinedOutput()
			t.Fatalf("timed out waiting for %s; journal:\n%s", what, j)
		}
	}
}

// vmTask is what `titus-agent task get -o json` says of a task.
type vmTask struct {
	State string `json:"state"`
	Pid   uint32 `json:"pid"`
}

func getTask(t *testing.T, id string) vmTask {
	t.Helper()
	out := sysd(t, "titus-agent", "task", "get", id, "-o", "json")
	var tk vmTask
	if err := json.Unmarshal([]byte(out), &tk); err != nil {
		t.Fatalf("task get -o json: %v\n%s", err, out)
	}
	return tk
}

// alive reports whether pid still runs (and is not a zombie).
func alive(pid uint32) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+1:])
	return len(f) > 0 && f[0] != "Z"
}

// TestVMSystemdAgentKeepsTasks installs the .deb into the guest, runs
// containerd as deploy/ configures it (SystemdCgroup = true) under the
// guest's systemd, and checks with a task running: socket activation on the
// first CLI call, Type=notify readiness, `systemctl restart`, the watchdog
// restarting a SIGSTOPped agent, a kill -9 of the agent and `systemctl stop`
// never kill the task (same PID throughout), and a restarted agent
// re-adopts it.
func TestVMSystemdAgentKeepsTasks(t *testing.T) {
	begin(t)
	deb := os.Getenv("TITUS_VM_DEB")
	if deb == "" {
		t.Fatal("TITUS_VM_DEB (the package to install) is not set")
	}
	if b, _ := os.ReadFile("/proc/1/comm"); strings.TrimSpace(string(b)) != "systemd" {
		t.Fatalf("PID 1 is %q, not systemd: this test runs only in the VM lane's guest", b)
	}
	reg := testenv.StartRegistry(t)
	image := testenv.PushBusybox(t, reg, "busybox", "latest")

	// containerd as the AMI bake installs it (deploy/install-containerd.sh).
	def, err := exec.Command(testenv.LookPath(t, "containerd"), "config", "default").Output()
	if err != nil {
		t.Fatalf("containerd config default: %v", err)
	}
	cfg := strings.ReplaceAll(string(def), "SystemdCgroup = false", "SystemdCgroup = true")
	if !strings.Contains(cfg, "SystemdCgroup = true") {
		t.Fatal("containerd's default config has no SystemdCgroup to set")
	}
	bin := testenv.CacheBin()
	files := map[string]string{
		"/etc/containerd/config.toml": cfg,
		"/etc/systemd/system/containerd.service": fmt.Sprintf(`[Unit]
Description=containerd container runtime
After=network.target local-fs.target
[Service]
Environment=PATH=%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=%s/containerd
Type=notify
Delegate=yes
KillMode=process
Restart=always
LimitNOFILE=infinity
TasksMax=infinity
OOMScoreAdjust=-999
[Install]
WantedBy=multi-user.target
`, bin, bin),
		// A short watchdog so the wedged-agent check is quick.
		"/etc/systemd/system/titus-agent.service.d/vm-test.conf": "[Service]\nWatchdogSec=4s\n",
	}
	for p, body := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	disks := t.TempDir() // on /tmp: the guest's XFS disk mounted with prjquota
	t.Cleanup(func() {
		_ = exec.Command("systemctl", "stop", "titus-agent.service", "titus-agent.socket").Run()
		_ = exec.Command("dpkg", "--purge", "titus-agent").Run()
		_ = exec.Command("systemctl", "stop", "containerd.service").Run()
		for p := range files {
			_ = os.Remove(p)
		}
		_ = exec.Command("systemctl", "daemon-reload").Run()
	})
	sysd(t, "systemctl", "daemon-reload")
	sysd(t, "systemctl", "start", "containerd.service")

	sysd(t, "dpkg", "-i", deb)
	for _, u := range []string{"titus-agent.socket", "titus-agent.service"} {
		if st, _ := exec.Command("systemctl", "is-enabled", u).Output(); strings.TrimSpace(string(st)) != "enabled" {
			t.Errorf("%s after install: %q, want enabled", u, st)
		}
		if st := unitProp(t, u, "ActiveState"); st != "inactive" {
			t.Errorf("%s after install: %s, want inactive (postinst must not start it)", u, st)
		}
	}
	conf := "/etc/titus-agent/agent.yaml"
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	s := strings.Replace(string(b), "diskDir: /var/lib/titus-agent/disks", "diskDir: "+disks, 1)
	s += fmt.Sprintf("\nregistries:\n  plainHTTP: [%q]\n", reg.Host)
	if err := os.WriteFile(conf, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	sysd(t, "titus-agent", "config", "check", "--config", conf)

	// Socket activation: only the socket runs; the first CLI call starts
	// the agent (Type=notify: systemctl reports it active once READY=1).
	sysd(t, "systemctl", "start", "titus-agent.socket")
	if st := unitProp(t, "titus-agent.service", "ActiveState"); st != "inactive" {
		t.Fatalf("titus-agent.service before the first call: %s", st)
	}
	if out := sysd(t, "titus-agent", "version"); !strings.Contains(out, "containerd: 2.") {
		t.Fatalf("version through the activated socket: %q", out)
	}
	if st := unitProp(t, "titus-agent.service", "ActiveState"); st != "active" {
		t.Fatalf("titus-agent.service after the first call: %s, want active", st)
	}

	id := fmt.Sprintf("vm-sd-%d", os.Getpid())
	sysd(t, "titus-agent", "task", "run", "--owner", "vm@example.com", "--id", id, "--grace", "1s", image, "--", "sleep", "100000")
	t.Cleanup(func() { _ = exec.Command("titus-agent", "task", "kill", "--wait", id).Run() })
	vmWaitUntil(t, "the task to run", 2*time.Minute, func() bool { return getTask(t, id).State == "TASK_STATE_RUNNING" })
	pid := getTask(t, id).Pid
	if pid == 0 || !alive(pid) {
		t.Fatalf("task pid %d is not running", pid)
	}
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if strings.Contains(string(cg), "titus-agent.service") {
		t.Fatalf("the task's cgroup is inside the agent's unit: %s", cg)
	}
	t.Logf("task %s pid %d cgroup %s", id, pid, strings.TrimSpace(string(cg)))
	// containerd.cgroupDriver auto on a systemd host: the task is a
	// systemd scope in a slice of its own in titus.slice, as
	// deploy/README.md says.
	scope := "titus-" + id + ".scope"
	slice := "titus-titus-" + strings.ReplaceAll(id, "-", `\x2d`) + ".slice"
	if want := "0::/titus.slice/titus-titus.slice/" + slice + "/" + scope; strings.TrimSpace(string(cg)) != want {
		t.Fatalf("the task's cgroup is %q, want %q (a systemd scope)", strings.TrimSpace(string(cg)), want)
	}
	if st := unitProp(t, scope, "ActiveState"); st != "active" {
		t.Fatalf("systemd says %s is %s, want active", scope, st)
	}
	survives := func(when string) {
		t.Helper()
		if !alive(pid) {
			t.Fatalf("the task's process %d died at %s", pid, when)
		}
		tk := getTask(t, id) // also: the agent answers (socket activation if it was stopped)
		if tk.State != "TASK_STATE_RUNNING" || tk.Pid != pid {
			t.Fatalf("after %s the agent reports %s pid %d, want RUNNING pid %d", when, tk.State, tk.Pid, pid)
		}
	}

	// systemctl restart: a new main process, READY again, task untouched.
	mainPID := unitProp(t, "titus-agent.service", "MainPID")
	sysd(t, "systemctl", "restart", "titus-agent.service")
	if got := unitProp(t, "titus-agent.service", "MainPID"); got == mainPID || got == "0" {
		t.Fatalf("MainPID after restart = %s (was %s)", got, mainPID)
	}
	survives("systemctl restart")

	// The watchdog: a SIGSTOPped agent sends no WATCHDOG=1; systemd kills
	// and restarts it. The task keeps running.
	mainPID = unitProp(t, "titus-agent.service", "MainPID")
	n, _ := strconv.Atoi(mainPID)
	if n == 0 {
		t.Fatal("no MainPID before the watchdog check")
	}
	if err := syscall.Kill(n, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	vmWaitUntil(t, "the watchdog to restart the wedged agent", 3*time.Minute, func() bool {
		got := unitProp(t, "titus-agent.service", "MainPID")
		return got != mainPID && got != "0" && unitProp(t, "titus-agent.service", "ActiveState") == "active"
	})
	if r := unitProp(t, "titus-agent.service", "NRestarts"); r == "0" {
		t.Errorf("NRestarts = %s after a watchdog kill", r)
	}
	survives("a watchdog restart")

	// kill -9 of the agent's main process: systemd restarts it
	// (Restart=always) and the new agent re-adopts the task.
	mainPID = unitProp(t, "titus-agent.service", "MainPID")
	if n, _ = strconv.Atoi(mainPID); n == 0 {
		t.Fatal("no MainPID before the kill -9")
	}
	if err := syscall.Kill(n, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vmWaitUntil(t, "systemd to restart the killed agent", 2*time.Minute, func() bool {
		got := unitProp(t, "titus-agent.service", "MainPID")
		return got != mainPID && got != "0" && unitProp(t, "titus-agent.service", "ActiveState") == "active"
	})
	survives("kill -9 of the agent")

	// systemctl stop: a clean exit, the task keeps running; the next CLI
	// call starts the agent through the socket and it re-adopts the task.
	sysd(t, "systemctl", "stop", "titus-agent.service")
	if r := unitProp(t, "titus-agent.service", "Result"); r != "success" {
		t.Errorf("Result after stop = %s, want success", r)
	}
	if !alive(pid) {
		t.Fatalf("systemctl stop killed the task's process %d", pid)
	}
	survives("systemctl stop and a CLI call")

	out := sysd(t, "titus-agent", "task", "kill", "--wait", id)
	if !strings.Contains(out, "KILLED") {
		t.Fatalf("task kill: %s", out)
	}
	vmWaitUntil(t, "the task's process to go", time.Minute, func() bool { return !alive(pid) })
}
