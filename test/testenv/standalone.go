package testenv

import (
	"fmt"
	"os"
)

// Standalone is a TB for programs outside `go test` (the benchmark, the
// demo's tools): Fatalf runs the cleanups and exits.
type Standalone struct{ cleanups []func() }

func (s *Standalone) Helper()                      {}
func (s *Standalone) Logf(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
func (s *Standalone) Cleanup(f func())             { s.cleanups = append(s.cleanups, f) }

func (s *Standalone) Fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	s.RunCleanups()
	os.Exit(1)
}

func (s *Standalone) TempDir() string {
	d, err := os.MkdirTemp("", "titus")
	if err != nil {
		s.Fatalf("tempdir: %v", err)
	}
	s.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// RunCleanups runs the registered cleanups in reverse order, once.
func (s *Standalone) RunCleanups() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
}
