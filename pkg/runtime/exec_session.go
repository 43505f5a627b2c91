package runtime

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// procInfo is one process of the host's process table.
type procInfo struct {
	Pid, PPid, Session int
}

// procTable is the host's process table: the OS side effect of ending an
// exec session, behind an interface so it can be faked.
type procTable interface {
	Procs() ([]procInfo, error)
	Kill(pid int, sig syscall.Signal) error
}

// sessionProcs are the processes an exec rooted at root started: its
// descendants, and (they may have been re-parented to the task's init)
// the members of its session when it leads one, as it does with a terminal.
// The result is sorted and excludes root itself.
func sessionProcs(procs []procInfo, root int) []int {
	children := map[int][]int{}
	for _, p := range procs {
		children[p.PPid] = append(children[p.PPid], p.Pid)
	}
	seen := map[int]bool{}
	queue := []int{root}
	for len(queue) > 0 {
		pid := queue[0]
		queue = queue[1:]
		for _, c := range children[pid] {
			if !seen[c] && c != root {
				seen[c] = true
				queue = append(queue, c)
			}
		}
	}
	for _, p := range procs {
		if p.Session == root && p.Pid != root {
			seen[p.Pid] = true
		}
	}
	out := make([]int, 0, len(seen))
	for pid := range seen {
		out = append(out, pid)
	}
	sort.Ints(out)
	return out
}

// killSession SIGKILLs what the exec rooted at root started.
func killSession(t procTable, root int) error {
	if root <= 1 {
		return nil
	}
	procs, err := t.Procs()
	if err != nil {
		return fmt.Errorf("exec session %d: %w", root, err)
	}
	var errs []error
	for _, pid := range sessionProcs(procs, root) {
		if err := t.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("kill %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// hostProcs reads /proc.
type hostProcs struct{}

func (hostProcs) Kill(pid int, sig syscall.Signal) error { return syscall.Kill(pid, sig) }

func (hostProcs) Procs() ([]procInfo, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []procInfo
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		if p, ok := parseStat(pid, string(b)); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseStat reads ppid and session from /proc/PID/stat; the command
// (field 2) may hold spaces and parentheses, so fields count from the last ')'.
func parseStat(pid int, s string) (procInfo, bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procInfo{}, false
	}
	f := strings.Fields(s[i+1:])
	// f[0]=state f[1]=ppid f[2]=pgrp f[3]=session
	if len(f) < 4 {
		return procInfo{}, false
	}
	ppid, err1 := strconv.Atoi(f[1])
	sid, err2 := strconv.Atoi(f[3])
	if err1 != nil || err2 != nil {
		return procInfo{}, false
	}
	return procInfo{Pid: pid, PPid: ppid, Session: sid}, true
}
