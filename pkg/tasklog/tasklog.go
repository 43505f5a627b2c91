package tasklog

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"gopkg.in/natefinch/lumberjack.v2"
)

// FileName is the current log file of a task, in its directory: stdout
// and stderr, line by line as they are written.
const FileName = "stdout.log"

// StderrFileName is the current file of the task's stderr alone (its
// lines are in FileName too).
const StderrFileName = "stderr.log"

// Path is where a task's stdout and stderr go.
func Path(logDir, taskID string) string {
	return filepath.Join(logDir, taskID, FileName)
}

// Flags configure one driver process.
type Flags struct {
	LogDir     string
	MaxSizeMiB int
	MaxFiles   int
}

// Args are f as containerd's binary log driver arguments (cio.BinaryIO):
// the shim turns each key and its value into two adjacent arguments, in no
// fixed order, which flag parsing accepts.
func (f Flags) Args() map[string]string {
	return map[string]string{
		"--log-dir":      f.LogDir,
		"--max-size-mib": strconv.Itoa(f.MaxSizeMiB),
		"--max-files":    strconv.Itoa(f.MaxFiles),
	}
}

// ParseArgs reads --log-dir, --max-size-mib and --max-files.
func ParseArgs(args []string) (Flags, error) {
	var flags []string
	for _, a := range args {
		if a != "" {
			flags = append(flags, a)
		}
	}
	var lf Flags
	fs := flag.NewFlagSet("titus-logger", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&lf.LogDir, "log-dir", "", "directory of per-task logs")
	fs.IntVar(&lf.MaxSizeMiB, "max-size-mib", 50, "size of one log file before rotation")
	fs.IntVar(&lf.MaxFiles, "max-files", 5, "rotated files kept")
	if err := fs.Parse(flags); err != nil {
		return lf, fmt.Errorf("logger: %w", err)
	}
	if fs.NArg() > 0 {
		return lf, fmt.Errorf("logger: unexpected argument %q", fs.Arg(0))
	}
	if lf.LogDir == "" {
		return lf, errors.New("logger: --log-dir is required")
	}
	return lf, nil
}

// Run is the body of titus-logger, a containerd binary log driver: the
// shim starts it with the task's stdout and stderr on fds 3 and
// 4, a readiness pipe on fd 5 and CONTAINER_ID in the environment. It copies
// both streams, line by line, into Path(logDir, CONTAINER_ID) with
// size-based rotation until both streams end or SIGTERM arrives.
func Run(ctx context.Context, args []string) error {
	lf, err := ParseArgs(args)
	if err != nil {
		return err
	}
	id := os.Getenv("CONTAINER_ID")
	if id == "" || strings.ContainsAny(id, "/\\") || id == "." || id == ".." {
		return fmt.Errorf("logger: bad CONTAINER_ID %q", id)
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stop()
	stdout, stderr, wait := os.NewFile(3, "CONTAINER_STDOUT"), os.NewFile(4, "CONTAINER_STDERR"), os.NewFile(5, "CONTAINER_WAIT")
	return run(ctx, lf, id, stdout, stderr, wait.Close)
}

// drainTimeout bounds how long a terminated logger keeps reading.
const drainTimeout = 2 * time.Second

// run copies the streams into the task's rotated log file. ready is
// called once the file is open.
func run(ctx context.Context, lf Flags, id string, stdout, stderr io.ReadCloser, ready func() error) error {
	path := Path(lf.LogDir, id)
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("logger: %w", err)
	}
	out := &lumberjack.Logger{Filename: path, MaxSize: lf.MaxSizeMiB, MaxBackups: lf.MaxFiles}
	defer out.Close()
	errOut := &lumberjack.Logger{Filename: filepath.Join(filepath.Dir(path), StderrFileName), MaxSize: lf.MaxSizeMiB, MaxBackups: lf.MaxFiles}
	defer errOut.Close()
	w := &lockedWriter{w: out}
	ew := teeWriter{w, errOut}
	if err := ready(); err != nil {
		return fmt.Errorf("logger: signal ready: %w", err)
	}

	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, c := range []struct {
		w io.Writer
		r io.Reader
	}{{w, stdout}, {ew, stderr}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = copyLines(c.w, c.r)
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		// The shim closes its pipe ends before SIGTERM: drain what is
		// buffered for a moment, then unblock the readers.
		select {
		case <-done:
		case <-time.After(drainTimeout):
			stdout.Close()
			stderr.Close()
			<-done
		}
		return nil
	}
	return errors.Join(errs...)
}

// copyLines copies r to w one whole line per write, so lines from stdout
// and stderr never interleave mid-line. When the log cannot be written (a
// full disk quota), lines are dropped but the pipe keeps draining: a task
// never blocks or dies because of its log. The first write error is
// returned at the end.
func copyLines(w io.Writer, r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var werr error
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if err != nil && !errors.Is(err, bufio.ErrBufferFull) {
				line = append(line, '\n') // end the last, unterminated line
			}
			if _, e := w.Write(line); e != nil && werr == nil {
				werr = e
			}
		}
		switch {
		case err == nil, errors.Is(err, bufio.ErrBufferFull):
		case errors.Is(err, io.EOF), errors.Is(err, os.ErrClosed):
			return werr
		default:
			return errors.Join(werr, err)
		}
	}
}

// teeWriter writes each stderr line to the combined log, then to the
// stderr-only one; the first error is returned after both were tried.
type teeWriter struct{ all, errOnly io.Writer }

func (t teeWriter) Write(b []byte) (int, error) {
	_, err := t.all.Write(b)
	if _, e := t.errOnly.Write(b); e != nil && err == nil {
		err = e
	}
	if err != nil {
		return 0, err
	}
	return len(b), nil
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
