package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/test/testenv"
)

// nspawnHost is a real systemd booted with systemd-nspawn from a root made
// of the host's /usr (under a private overlay) and the installed .deb. It
// shares the host's network, so it reaches the test's registry on loopback.
type nspawnHost struct {
	t      *testing.T
	root   string
	leader int // the container's PID 1 (systemd), as seen from the host
	cmd    *exec.Cmd
	log    string
}

// bootNspawn prepares the root, installs the package into it and boots it.
// configure edits the tree (units, config) before the boot.
func bootNspawn(t *testing.T, deb string, configure func(root string)) *nspawnHost {
	t.Helper()
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		t.Fatalf("systemd-nspawn is required (apt-get install systemd-container): %v", err)
	}
	base := t.TempDir()
	root := filepath.Join(base, "root")
	for _, d := range []string{"root/usr", "root/etc", "root/var", "root/run", "root/tmp", "root/proc", "root/sys", "root/dev", "root/root", "root/opt", "upper", "work"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+d, filepath.Join(root, d)); err != nil {
			t.Fatal(err)
		}
	}
	// /usr is the host's, read-only below a private writable layer, so the
	// package can install its binaries and units into it.
	usr := filepath.Join(root, "usr")
	if err := unix.Mount("overlay", usr, "overlay", 0,
		fmt.Sprintf("lowerdir=/usr,upperdir=%s,workdir=%s", filepath.Join(base, "upper"), filepath.Join(base, "work"))); err != nil {
		t.Fatalf("overlay /usr: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(usr, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", usr, err)
		}
	})
	files := map[string]string{
		"etc/passwd":                 "root:x:0:0::/root:/bin/sh\n",
		"etc/group":                  "root:x:0:\n",
		"etc/shadow":                 "root:*::0:99999:7:::\n",
		"etc/gshadow":                "root:*::\n",
		"etc/machine-id":             "",
		"etc/containerd/config.toml": "version = 3\n",
		// containerd as a distribution packages it, from the test's build.
		"etc/systemd/system/containerd.service": fmt.Sprintf(`[Unit]
Description=containerd
[Service]
Type=notify
ExecStart=%s --config /etc/containerd/config.toml
Delegate=yes
KillMode=process
[Install]
WantedBy=multi-user.target
`, filepath.Join(testenv.CacheBin(), "containerd")),
	}
	osRelease, err := os.ReadFile("/etc/os-release")
	if err != nil {
		t.Fatal(err)
	}
	files["etc/os-release"] = string(osRelease)
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/etc/systemd/system/containerd.service", filepath.Join(wants, "containerd.service")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-x", deb, root); err != nil {
		t.Fatal(err)
	}
	if _, _, err := run(t, time.Minute, "", nil, "dpkg-deb", "-e", deb, filepath.Join(root, "opt/DEBIAN")); err != nil {
		t.Fatal(err)
	}
	configure(root)

	h := &nspawnHost{t: t, root: root, log: filepath.Join(base, "console.log")}
	logf, err := os.Create(h.log)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	name := fmt.Sprintf("titus-nspawn-%d", os.Getpid())
	h.cmd = exec.Command("systemd-nspawn", "--quiet", "--directory", root, "--machine", name,
		"--register=no", "--keep-unit", "--bind-ro="+testenv.CacheBin(), "--boot")
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := h.cmd.Start(); err != nil {
		t.Fatalf("systemd-nspawn: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- h.cmd.Wait() }()
	t.Cleanup(func() {
		// SIGTERM makes nspawn shut the container's systemd down cleanly;
		// every process in it dies with its PID namespace.
		_ = h.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(90 * time.Second):
			_ = h.cmd.Process.Kill()
			<-exited
			t.Errorf("systemd-nspawn did not shut down; killed it")
		}
		if t.Failed() {
			b, _ := os.ReadFile(h.log)
			t.Logf("container console:\n%s", tailLog(string(b)))
		}
	})
	h.leader = h.waitLeader(exited)
	return h
}

// waitLeader finds the container's PID 1 (systemd): nspawn's child.
func (h *nspawnHost) waitLeader(exited <-chan error) int {
	h.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(h.log)
			h.t.Fatalf("systemd-nspawn exited at boot: %v\n%s", err, b)
		default:
		}
		// nspawn forks helpers before the container's init; wait for the
		// child that is systemd.
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", h.cmd.Process.Pid, h.cmd.Process.Pid))
		for _, f := range strings.Fields(string(b)) {
			comm, _ := os.ReadFile("/proc/" + f + "/comm")
			if pid, err := strconv.Atoi(f); err == nil && strings.TrimSpace(string(comm)) == "systemd" {
				return pid
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	h.t.Fatal("no container PID 1 after a minute")
	return 0
}

// exec runs a command inside the container (all its namespaces).
func (h *nspawnHost) exec(args ...string) (string, error) {
	h.t.Helper()
	out, _, err := run(h.t, 2*time.Minute, "", nil, "nsenter", append([]string{"--target", strconv.Itoa(h.leader), "--all", "--"}, args...)...)
	return strings.TrimSpace(out), err
}

func (h *nspawnHost) mustExec(args ...string) string {
	h.t.Helper()
	out, err := h.exec(args...)
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// show reads one property of a unit.
func (h *nspawnHost) show(unit, prop string) string {
	h.t.Helper()
	return h.mustExec("systemctl", "show", "--value", "-p", prop, unit)
}

// waitFor polls cond until it holds, failing after timeout.
func (h *nspawnHost) waitFor(what string, timeout time.Duration, cond func() bool) {
	h.t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			tasks, _ := h.exec("titus-agent", "task", "ls", "-a", "-o", "json")
			journal, _ := h.exec("journalctl", "--no-pager", "-n", "80")
			h.t.Fatalf("timed out waiting for %s; tasks:\n%s\njournal:\n%s", what, tasks, journal)
		}
	}
}

// TestSystemdNspawnRunsAgent boots a real systemd in systemd-nspawn with the
// .deb installed and checks, under that systemd: postinst enables without
// starting; the socket unit (0660, group titus) activates the agent on the
// first CLI call; Type=notify readiness, STATUS= and structured journal
// entries; `systemctl restart`;
// a CLI call made while the agent is stopped starts it and is answered; a
// wedged agent is restarted by the watchdog; stop is clean.
func TestSystemdNspawnRunsAgent(t *testing.T) {
	begin(t)
	root := repoRoot(t)
	dist := t.TempDir()
	version := fmt.Sprintf("0.0.0~nspawn%d", os.Getpid())
	if _, _, err := run(t, 10*time.Minute, root, nil, "make", "deb", "DIST="+dist, "VERSION="+version, "ARCH=amd64"); err != nil {
		t.Fatal(err)
	}
	deb := filepath.Join(dist, "titus-agent_"+version+"_amd64.deb")

	h := bootNspawn(t, deb, func(root string) {
		cfg := filepath.Join(root, "etc/titus-agent/agent.yaml")
		b, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// The container shares the host's network: no metrics port that
		// could collide with another agent's.
		s := strings.Replace(string(b), "metricsListen: 127.0.0.1:9101", "metricsListen: \"\"", 1)
		if err := os.WriteFile(cfg, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		// A short watchdog so the wedged-agent check is quick.
		dropin := filepath.Join(root, "etc/systemd/system/titus-agent.service.d/test.conf")
		if err := os.MkdirAll(filepath.Dir(dropin), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dropin, []byte("[Service]\nWatchdogSec=4s\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	h.waitFor("the container's systemd to finish booting", 5*time.Minute, func() bool {
		out, _ := h.exec("systemctl", "is-system-running")
		st, _ := h.exec("systemctl", "is-active", "containerd.service", "multi-user.target")
		return (out == "running" || out == "degraded" || out == "starting") && st == "active\nactive"
	})
	if st := h.show("containerd.service", "ActiveState"); st != "active" {
		t.Fatalf("containerd.service is %s", st)
	}

	// The package's postinst, as dpkg runs it: enabled, nothing started.
	h.mustExec("sh", "/opt/DEBIAN/postinst", "configure")
	for _, u := range []string{"titus-agent.socket", "titus-agent.service"} {
		if st, _ := h.exec("systemctl", "is-enabled", u); st != "enabled" {
			t.Errorf("%s after postinst: %q, want enabled", u, st)
		}
		if st := h.show(u, "ActiveState"); st != "inactive" {
			t.Errorf("%s after postinst: %s, want inactive (postinst must not start it)", u, st)
		}
	}
	if _, err := h.exec("getent", "group", "titus"); err != nil {
		t.Errorf("postinst did not create the titus group: %v", err)
	}

	// Socket activation: only the socket is started; the first CLI call
	// starts the agent, and waits for it rather than failing.
	h.mustExec("systemctl", "start", "titus-agent.socket")
	if mode := h.mustExec("stat", "-c", "%a %G", "/run/titus-agent/agent.sock"); mode != "660 titus" {
		t.Errorf("socket mode/group = %q, want 660 titus", mode)
	}
	if out, err := h.exec("titus-agent", "version"); err != nil || !strings.Contains(out, "daemon: "+version) {
		t.Fatalf("version through the activated socket: %v %q", err, out)
	}
	if st := h.show("titus-agent.service", "ActiveState"); st != "active" {
		t.Fatalf("titus-agent.service after the first call: %s, want active (socket activation)", st)
	}

	// Under systemd the agent logs to the journal natively: attributes are
	// journal fields an operator can match on.
	h.waitFor("the agent's structured journal entry", time.Minute, func() bool {
		out, _ := h.exec("journalctl", "--no-pager", "-o", "cat", "_SYSTEMD_UNIT=titus-agent.service", "SOCKET=/run/titus-agent/agent.sock")
		return strings.Contains(out, "agent ready")
	})

	// Tasks cannot run inside this container on a cgroup-v1-only kernel
	// (nspawn mounts the v1 controllers read-only, so runc cannot make task
	// cgroups); that agent restarts and stops leave tasks running is shown
	// outside systemd by TestAgentKill9ReadoptsRunningTasks and
	// TestAgentGracefulStopLeavesTasksRunning. Here: what systemd sees.
	h.waitFor("STATUS= with task counts", 5*time.Minute, func() bool {
		return strings.Contains(h.show("titus-agent.service", "StatusText"), "0 running")
	})
	answers := func(when string) {
		t.Helper()
		if out, err := h.exec("titus-agent", "task", "ls", "-a"); err != nil {
			t.Fatalf("CLI after %s: %v %q", when, err, out)
		}
		if st := h.show("titus-agent.service", "ActiveState"); st != "active" {
			t.Fatalf("titus-agent.service after %s: %s", when, st)
		}
	}

	// systemctl restart: a new main process, READY again (Type=notify).
	mainPID := h.show("titus-agent.service", "MainPID")
	h.mustExec("systemctl", "restart", "titus-agent.service")
	if got := h.show("titus-agent.service", "MainPID"); got == mainPID || got == "0" {
		t.Fatalf("MainPID after restart = %s (was %s)", got, mainPID)
	}
	answers("systemctl restart")

	// systemctl stop, then a CLI call while the agent is down: it waits in
	// the socket's backlog, starts the agent and is answered.
	h.mustExec("systemctl", "stop", "titus-agent.service")
	if st := h.show("titus-agent.service", "ActiveState"); st != "inactive" {
		t.Fatalf("after stop: %s", st)
	}
	answers("systemctl stop and a CLI call") // socket activation starts it again

	// A wedged agent (SIGSTOP) stops sending WATCHDOG=1: systemd kills and
	// restarts it.
	mainPID = h.show("titus-agent.service", "MainPID")
	n, _ := strconv.Atoi(mainPID)
	if n == 0 {
		t.Fatal("no MainPID before the watchdog check")
	}
	h.mustExec("kill", "-STOP", mainPID)
	h.waitFor("the watchdog to restart the wedged agent", 5*time.Minute, func() bool {
		got := h.show("titus-agent.service", "MainPID")
		return got != mainPID && got != "0" && h.show("titus-agent.service", "ActiveState") == "active"
	})
	if r := h.show("titus-agent.service", "NRestarts"); r == "0" {
		t.Errorf("NRestarts = %s after a watchdog kill", r)
	}
	answers("a watchdog restart")

	// systemctl stop: STOPPING=1 then a clean exit, not a kill.
	h.mustExec("systemctl", "stop", "titus-agent.service")
	if r := h.show("titus-agent.service", "Result"); r != "success" {
		t.Errorf("Result after stop = %s, want success", r)
	}
}
