package runtime

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeCgroups records what an exec cgroup does; files holds what reads
// return (absent: does not exist), and a kill empties the cgroup.procs
// files of the pid.
type fakeCgroups struct {
	files   map[string]string
	ops     []string
	failOn  map[string]error // op+" "+path
	onWrite func(file, value string)
}

func (f *fakeCgroups) fail(op, p string) error {
	if err := f.failOn[op+" "+p]; err != nil {
		return err
	}
	return nil
}

func (f *fakeCgroups) Mkdir(dir string) error {
	f.ops = append(f.ops, "mkdir "+dir)
	if err := f.fail("mkdir", dir); err != nil {
		return err
	}
	f.files[filepath.Join(dir, "cgroup.procs")] = ""
	return nil
}

func (f *fakeCgroups) Rmdir(dir string) error {
	f.ops = append(f.ops, "rmdir "+dir)
	if err := f.fail("rmdir", dir); err != nil {
		return err
	}
	for k := range f.files {
		if strings.HasPrefix(k, dir+"/") {
			delete(f.files, k)
		}
	}
	return nil
}

func (f *fakeCgroups) Write(file, value string) error {
	f.ops = append(f.ops, "write "+file+" "+value)
	if err := f.fail("write", file); err != nil {
		return err
	}
	if filepath.Base(file) == "cgroup.procs" {
		f.files[file] = strings.TrimSpace(f.files[file] + " " + value)
	} else {
		f.files[file] = value
	}
	if f.onWrite != nil {
		f.onWrite(file, value)
	}
	return nil
}

func (f *fakeCgroups) Read(file string) (string, error) {
	v, ok := f.files[file]
	if !ok {
		return "", &os.PathError{Op: "open", Path: file, Err: syscall.ENOENT}
	}
	return v, nil
}

func (f *fakeCgroups) Kill(pid int, sig syscall.Signal) error {
	f.ops = append(f.ops, "kill "+itoa(pid)+" "+sig.String())
	for k, v := range f.files {
		if filepath.Base(k) == "cgroup.procs" {
			var keep []string
			for _, p := range strings.Fields(v) {
				if p != itoa(pid) {
					keep = append(keep, p)
				}
			}
			f.files[k] = strings.Join(keep, " ")
		}
	}
	return nil
}

const execCg = "titus-exec-exec-1"

func TestExecCgroupV1FreezesSweepsAndRemoves(t *testing.T) {
	task := "/cg/freezer/titus/web"
	f := &fakeCgroups{files: map[string]string{task + "/cgroup.procs": "10"}}
	c, err := newExecCgroup(f, "/cg", "/titus/web", execCg)
	if err != nil {
		t.Fatal(err)
	}
	c.poll = 0
	dir := task + "/" + execCg
	if err := c.Enter(20, 21); err != nil {
		t.Fatal(err)
	}
	// 22 was born inside (a setsid'd grandchild).
	f.files[dir+"/cgroup.procs"] += " 22"
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"mkdir " + dir,
		"write " + dir + "/cgroup.procs 20",
		"write " + dir + "/cgroup.procs 21",
		"write " + dir + "/freezer.state FROZEN",
		"kill 20 killed", "kill 21 killed", "kill 22 killed",
		"write " + dir + "/freezer.state THAWED",
		"rmdir " + dir,
	}
	if d := cmp.Diff(want, f.ops); d != "" {
		t.Errorf("ops (-want +got):\n%s", d)
	}
	if f.files[task+"/cgroup.procs"] != "10" {
		t.Errorf("the task's own process was touched: %q", f.files[task+"/cgroup.procs"])
	}
	// Twice is fine and does nothing.
	f.ops = nil
	if err := c.Kill(); err != nil || len(f.ops) != 0 {
		t.Errorf("second Kill: %v %v", err, f.ops)
	}
}

func TestExecCgroupV2(t *testing.T) {
	task := "/cg/titus.slice/titus-web.scope"
	for _, tc := range []struct {
		name   string
		noKill bool // a kernel before 5.14: no cgroup.kill
		want   func(dir string) []string
	}{
		{"cgroup.kill", false, func(dir string) []string {
			return []string{"mkdir " + dir, "write " + dir + "/cgroup.procs 20", "write " + dir + "/cgroup.kill 1", "rmdir " + dir}
		}},
		{"freeze", true, func(dir string) []string {
			return []string{"mkdir " + dir, "write " + dir + "/cgroup.procs 20", "write " + dir + "/cgroup.kill 1",
				"write " + dir + "/cgroup.freeze 1", "kill 20 killed", "write " + dir + "/cgroup.freeze 0", "rmdir " + dir}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := task + "/" + execCg
			f := &fakeCgroups{files: map[string]string{"/cg/cgroup.controllers": "cpu memory pids", task + "/cgroup.procs": "10"}}
			if tc.noKill {
				f.failOn = map[string]error{"write " + dir + "/cgroup.kill": &os.PathError{Op: "open", Path: dir + "/cgroup.kill", Err: syscall.ENOENT}}
			} else {
				f.onWrite = func(file, _ string) {
					if filepath.Base(file) == "cgroup.kill" {
						f.files[dir+"/cgroup.procs"] = ""
					}
				}
			}
			c, err := newExecCgroup(f, "/cg", "titus.slice:titus:web", execCg)
			if err != nil {
				t.Fatal(err)
			}
			c.poll = 0
			if err := c.Enter(20); err != nil {
				t.Fatal(err)
			}
			if err := c.Kill(); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want(dir), f.ops); d != "" {
				t.Errorf("ops (-want +got):\n%s", d)
			}
		})
	}
}

// Without the task's cgroup there is nothing to hold the session: the
// exec is refused before anything starts.
func TestExecCgroupNeedsTheTasks(t *testing.T) {
	for _, path := range []string{"", "/titus/gone", "bad:path"} {
		f := &fakeCgroups{files: map[string]string{}}
		if _, err := newExecCgroup(f, "/cg", path, execCg); err == nil {
			t.Errorf("%q: no error", path)
		}
		if len(f.ops) != 0 {
			t.Errorf("%q: %v", path, f.ops)
		}
	}
}

// A process that exited before it was moved is no error; any other
// failure to move is.
func TestExecCgroupEnter(t *testing.T) {
	dir := "/cg/freezer/t/" + execCg
	f := &fakeCgroups{files: map[string]string{"/cg/freezer/t/cgroup.procs": ""}, failOn: map[string]error{}}
	c, err := newExecCgroup(f, "/cg", "/t", execCg)
	if err != nil {
		t.Fatal(err)
	}
	f.failOn["write "+dir+"/cgroup.procs"] = &os.PathError{Op: "write", Path: dir, Err: syscall.ESRCH}
	if err := c.Enter(20); err != nil {
		t.Errorf("gone process: %v", err)
	}
	f.failOn["write "+dir+"/cgroup.procs"] = &os.PathError{Op: "write", Path: dir, Err: syscall.EACCES}
	if err := c.Enter(20); err == nil || !strings.Contains(err.Error(), "move 20") {
		t.Errorf("refused move: %v", err)
	}
}
