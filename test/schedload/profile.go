package schedload

import (
	"fmt"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/pprof"
)

// profiler writes, per phase of a run, a CPU profile of the whole process
// and its mutex and block profiles at the phase's start and end (read
// the phase's own with `go tool pprof -base NAME-mutex-start.pprof
// NAME-mutex-end.pprof`). A zero profiler does nothing.
type profiler struct {
	dir   string
	phase string
	cpu   *os.File
}

func newProfiler(dir string) (*profiler, error) {
	if dir == "" {
		return &profiler{}, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile dir: %w", err)
	}
	goruntime.SetMutexProfileFraction(20)
	goruntime.SetBlockProfileRate(100_000) // a sample per 100µs blocked
	return &profiler{dir: dir}, nil
}

// start begins phase name.
func (p *profiler) start(name string) error {
	if p.dir == "" {
		return nil
	}
	p.phase = name
	if err := p.snapshot("start"); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(p.dir, name+"-cpu.pprof"))
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	p.cpu = f
	return nil
}

// stop ends the phase begun last.
func (p *profiler) stop() error {
	if p.cpu == nil {
		return nil
	}
	pprof.StopCPUProfile()
	err := p.cpu.Close()
	p.cpu = nil
	if serr := p.snapshot("end"); err == nil {
		err = serr
	}
	return err
}

func (p *profiler) snapshot(at string) error {
	for _, kind := range []string{"mutex", "block"} {
		f, err := os.Create(filepath.Join(p.dir, p.phase+"-"+kind+"-"+at+".pprof"))
		if err != nil {
			return err
		}
		err = pprof.Lookup(kind).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
