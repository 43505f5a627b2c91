package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profileFlags: where the fullstack part writes the agents' profiles
// (empty: none) and how long the CPU profile and trace of the sequential
// launches run.
var (
	profileDir     string
	profileSeconds int
)

// freeLoopbackAddr is a 127.0.0.1 port free a moment ago, for an agent's
// debugListen.
func freeLoopbackAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}

// debugConfig is the agent config line turning its debug endpoint on at
// addr ("" when not profiling).
func debugConfig(addr string) string {
	if addr == "" {
		return ""
	}
	return "debugListen: " + addr + "\n"
}

// profiler fetches one agent's profiles from its debug endpoint.
type profiler struct {
	name, addr string
	wg         sync.WaitGroup
}

// start begins the agent's CPU profile and execution trace, for
// profileSeconds and a quarter of it (traces are large).
func (p *profiler) start() {
	if p == nil || p.addr == "" {
		return
	}
	get := func(file, path string) {
		defer p.wg.Done()
		fetchTo(filepath.Join(profileDir, p.name+"-"+file), "http://"+p.addr+path, time.Duration(profileSeconds+30)*time.Second)
	}
	p.wg.Add(2)
	go get("cpu.pprof", fmt.Sprintf("/debug/pprof/profile?seconds=%d", profileSeconds))
	go get("launch.trace", fmt.Sprintf("/debug/pprof/trace?seconds=%d", max(1, profileSeconds/4)))
}

// finish waits for the profiles start began and takes the contention
// (mutex, block) profiles accumulated so far.
func (p *profiler) finish() {
	if p == nil || p.addr == "" {
		return
	}
	p.wg.Wait()
	for _, name := range []string{"mutex", "block"} {
		fetchTo(filepath.Join(profileDir, p.name+"-"+name+".pprof"), "http://"+p.addr+"/debug/pprof/"+name, 30*time.Second)
	}
	fmt.Printf("profiles of %s in %s (go tool pprof -top %s)\n", p.name, profileDir, filepath.Join(profileDir, p.name+"-cpu.pprof"))
}

func fetchTo(file, url string, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: profile %s: %v\n", url, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: profile: %v\n", err)
		return
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "bench: profile %s: %v (HTTP %d)\n", url, err, resp.StatusCode)
	}
}

func (p *profiler) address() string {
	if p == nil {
		return ""
	}
	return p.addr
}
