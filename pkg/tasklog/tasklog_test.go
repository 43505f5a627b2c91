package tasklog

import (
	"context"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseLoggerArgs(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    Flags
		wantErr bool
	}{
		{name: "flags", args: []string{"--log-dir=/l", "--max-size-mib=3", "--max-files", "2"}, want: Flags{LogDir: "/l", MaxSizeMiB: 3, MaxFiles: 2}},
		{name: "pairs", args: []string{"--max-files", "7", "--log-dir", "/var/log/titus tasks", "--max-size-mib", "9"}, want: Flags{LogDir: "/var/log/titus tasks", MaxSizeMiB: 9, MaxFiles: 7}},
		{name: "stray argument", args: []string{"--log-dir=/l", "logger"}, wantErr: true},
		{name: "defaults and empty args", args: []string{"", "--log-dir=/l"}, want: Flags{LogDir: "/l", MaxSizeMiB: 50, MaxFiles: 5}},
		{name: "no dir", args: []string{"--max-files=1"}, wantErr: true},
		{name: "unknown flag", args: []string{"--log-dir=/l", "--nope=1"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseArgs(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil {
				if diff := cmp.Diff(tt.want, got); diff != "" {
					t.Errorf("flags (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// The arguments handed to containerd parse back to the same flags, in
// whatever order the shim puts the pairs.
func TestArgsRoundTrip(t *testing.T) {
	want := Flags{LogDir: "/var/log/titus tasks", MaxSizeMiB: 8, MaxFiles: 2}
	m := want.Args()
	keys := slices.Sorted(maps.Keys(m))
	for range 2 {
		var args []string
		for _, k := range keys {
			args = append(args, k, m[k])
		}
		got, err := ParseArgs(args)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("round trip of %v (-want +got):\n%s", args, diff)
		}
		slices.Reverse(keys)
	}
}

func TestRunLoggerCopiesBothStreams(t *testing.T) {
	dir := t.TempDir()
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	readyCalled := false
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), Flags{LogDir: dir, MaxSizeMiB: 1, MaxFiles: 2}, "t1", outR, errR,
			func() error { readyCalled = true; return nil })
	}()
	io.WriteString(outW, "out 1\nout 2\n")
	io.WriteString(errW, "err 1\n")
	io.WriteString(outW, "partial")
	outW.Close()
	errW.Close()
	if err := <-done; err != nil {
		t.Fatalf("runLogger: %v", err)
	}
	if !readyCalled {
		t.Error("ready was not called")
	}
	b, err := os.ReadFile(Path(dir, "t1"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	sort.Strings(lines)
	if diff := cmp.Diff([]string{"", "err 1", "out 1", "out 2", "partial"}, lines); diff != "" {
		t.Errorf("log lines (-want +got):\n%s", diff)
	}
	// stderr alone, for task logs --stderr.
	b, err = os.ReadFile(filepath.Join(dir, "t1", StderrFileName))
	if err != nil || string(b) != "err 1\n" {
		t.Errorf("stderr.log: %q, %v", b, err)
	}
}

func TestRunLoggerRotates(t *testing.T) {
	dir := t.TempDir()
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	errW.Close()
	done := make(chan error, 1)
	go func() {
		done <- run(context.Background(), Flags{LogDir: dir, MaxSizeMiB: 1, MaxFiles: 2}, "t1", outR, errR,
			func() error { return nil })
	}()
	line := strings.Repeat("x", 1023) + "\n"
	for range 5 * 1024 { // 5 MiB through a 1 MiB file keeping 2 backups
		if _, err := io.WriteString(outW, line); err != nil {
			t.Fatal(err)
		}
	}
	outW.Close()
	if err := <-done; err != nil {
		t.Fatalf("runLogger: %v", err)
	}
	// lumberjack removes old backups in a goroutine of its own after each
	// rotation, so the count converges shortly after the logger returns.
	var files []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if files, err = filepath.Glob(filepath.Join(dir, "t1", "*")); err != nil {
			t.Fatal(err)
		}
		if len(files) == 3 || time.Now().After(deadline) {
			break
		}
	}
	if len(files) != 3 {
		t.Errorf("want current file + 2 backups, got %v", files)
	}
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1<<20 {
			t.Errorf("%s is %d bytes, over the 1 MiB limit", f, st.Size())
		}
	}
}

func TestRunLoggerStopsOnCancel(t *testing.T) {
	outR, _ := io.Pipe()
	errR, _ := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, Flags{LogDir: t.TempDir(), MaxSizeMiB: 1, MaxFiles: 1}, "t1", outR, errR, func() error { return nil })
	}()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("runLogger: %v", err)
	}
}
