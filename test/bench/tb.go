package main

import (
	"fmt"
	"os"
)

// benchTB lets the benchmark use test/testenv outside `go test`.
type benchTB struct {
	cleanups []func()
	dirs     []string
}

func (b *benchTB) Helper()                      {}
func (b *benchTB) Logf(format string, a ...any) { fmt.Fprintf(os.Stderr, format+"\n", a...) }
func (b *benchTB) Cleanup(f func())             { b.cleanups = append(b.cleanups, f) }
func (b *benchTB) Fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", a...)
	b.cleanup()
	os.Exit(1)
}

func (b *benchTB) TempDir() string {
	d, err := os.MkdirTemp("", "titus-bench")
	if err != nil {
		b.Fatalf("tempdir: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func (b *benchTB) cleanup() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
	b.cleanups = nil
}
