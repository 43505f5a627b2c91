package tasklog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// ChunkSize is the most bytes Read hands to send at once.
const ChunkSize = 32 << 10

// ErrNoStream is returned by Read for a stream the task has no file of.
var ErrNoStream = errors.New("no such log stream")

// ReadOptions say which of a task's logs Read reads and for how long.
type ReadOptions struct {
	// Stream is the file's base name: "stdout" (stdout.log and its rotated
	// files stdout-<time>.log) or "stderr".
	Stream string
	// Since skips rotated files last written before it, and the current
	// file too when not following (lines carry no time of their own).
	Since time.Time
	// Follow keeps reading the current file as it grows and across
	// rotations until Ended reports true and the file is drained, or ctx
	// ends.
	Follow bool
	// Ended reports whether the task has ended (nil: never).
	Ended func() bool
	// Poll is how often a followed file is checked (default 200ms).
	Poll time.Duration
}

// Read sends a task's log, from its directory dir (LogDir/<task id>), to
// send in chunks of at most ChunkSize bytes, oldest first: the rotated
// files, then the current one. At most one file is open at a time and it
// is closed before Read returns, whatever ends it (ctx, an error of send).
// send must not keep the slice it is given.
func Read(ctx context.Context, dir string, o ReadOptions, send func([]byte) error) error {
	if o.Stream == "" {
		o.Stream = "stdout"
	}
	if o.Stream != "stdout" && o.Stream != "stderr" {
		return fmt.Errorf("%w: %q", ErrNoStream, o.Stream)
	}
	if o.Poll <= 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.Ended == nil {
		o.Ended = func() bool { return false }
	}
	buf := make([]byte, ChunkSize)
	rotated, err := rotatedFiles(dir, o.Stream)
	if err != nil {
		return err
	}
	for _, p := range rotated {
		if st, err := os.Stat(p); err != nil || (!o.Since.IsZero() && st.ModTime().Before(o.Since)) {
			continue // removed meanwhile, or too old
		}
		if err := readFile(ctx, p, buf, send); err != nil {
			return err
		}
	}
	return readCurrent(ctx, filepath.Join(dir, o.Stream+".log"), o, buf, send)
}

// rotatedFiles lists dir's rotated files of stream, oldest first (the
// time in their names sorts as it reads).
func rotatedFiles(dir, stream string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read log dir: %w", err)
	}
	var out []string
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, stream+"-") && strings.HasSuffix(n, ".log") && e.Type().IsRegular() {
			out = append(out, filepath.Join(dir, n))
		}
	}
	sort.Strings(out)
	return out, nil
}

func readFile(ctx context.Context, path string, buf []byte, send func([]byte) error) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	_, err = drain(ctx, f, buf, send)
	return err
}

// drain sends what f holds from its offset to its end.
func drain(ctx context.Context, f *os.File, buf []byte, send func([]byte) error) (int64, error) {
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := f.Read(buf)
		if n > 0 {
			total += int64(n)
			if err := send(buf[:n]); err != nil {
				return total, err
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, fmt.Errorf("read log: %w", err)
		}
	}
}

// readCurrent reads the current file and, when following, what is
// appended to it and to the files that replace it at rotation.
func readCurrent(ctx context.Context, path string, o ReadOptions, buf []byte, send func([]byte) error) error {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	first := true
	for {
		if f == nil {
			var err error
			f, err = os.Open(path)
			switch {
			case errors.Is(err, os.ErrNotExist):
				f = nil
			case err != nil:
				return fmt.Errorf("open log: %w", err)
			case first && !o.Follow && !o.Since.IsZero():
				if st, err := f.Stat(); err == nil && st.ModTime().Before(o.Since) {
					return nil
				}
			}
			first = false
		}
		if f != nil {
			if _, err := drain(ctx, f, buf, send); err != nil {
				return err
			}
			// Rotated: the file at path is another one. What was
			// appended to ours before the rename was drained above.
			if cur, err := os.Stat(path); err == nil {
				if mine, err := f.Stat(); err == nil && !os.SameFile(cur, mine) {
					f.Close()
					f = nil
					continue
				}
			}
		}
		if !o.Follow {
			return nil
		}
		if o.Ended() {
			// One more drain after the end was seen: whatever the task
			// wrote before it ended is in the file by now.
			if f != nil {
				_, err := drain(ctx, f, buf, send)
				return err
			}
			return nil
		}
		t := time.NewTimer(o.Poll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}
