package logship

import (
	"strings"
	"testing"
)

func TestKey(t *testing.T) {
	tests := []struct {
		name string
		ref  KeyRef
		want string
	}{
		{"plain", KeyRef{Prefix: "logs", App: "api", Job: "j-1", Task: "t-1", Stream: StreamStdout, Seq: 3}, "logs/api/j-1/t-1/stdout.3"},
		{"prefix slashes", KeyRef{Prefix: "/a/b/", App: "api", Job: "j", Task: "t", Stream: StreamStderr}, "a/b/api/j/t/stderr.0"},
		{"no prefix", KeyRef{App: "api", Job: "j", Task: "t", Stream: StreamStdout, Seq: 1}, "api/j/t/stdout.1"},
		{"no app or job", KeyRef{Prefix: "p", Task: "t", Stream: StreamStdout}, "p/_/_/t/stdout.0"},
		{"app named _", KeyRef{Prefix: "p", App: "_", Task: "t", Stream: StreamStdout}, "p/%5F/_/t/stdout.0"},
		{"dotdot task", KeyRef{Prefix: "p", App: "a", Job: "j", Task: "..", Stream: StreamStdout}, "p/a/j/%2E%2E/stdout.0"},
		{"slash in app", KeyRef{Prefix: "p", App: "victim/j/t", Job: "x", Task: "y", Stream: StreamStdout}, "p/victim%2Fj%2Ft/x/y/stdout.0"},
		{"traversal app", KeyRef{Prefix: "p", App: "../../other", Job: "x", Task: "y", Stream: StreamStdout}, "p/..%2F..%2Fother/x/y/stdout.0"},
		{"gzip", KeyRef{Prefix: "p", App: "a", Job: "j", Task: "t", Stream: StreamStderr, Seq: 2, Gzip: true}, "p/a/j/t/stderr.2.gz"},
		{"percent", KeyRef{Prefix: "p", App: "a%2Fb", Job: "x", Task: "y", Stream: StreamStdout}, "p/a%252Fb/x/y/stdout.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Key(tt.ref); got != tt.want {
				t.Errorf("Key = %q, want %q", got, tt.want)
			}
		})
	}
}

// Distinct values never give the same segment, and no segment holds a
// '/' or is "." or "..".
func TestEscapeSegmentOneToOne(t *testing.T) {
	in := []string{"", "_", "%5F", ".", "..", "...", "%2E", "a/b", "a%2Fb", "a b", "a+b", "ä", "%", "_x", "x_"}
	seen := map[string]string{}
	for _, s := range in {
		e := EscapeSegment(s)
		if strings.Contains(e, "/") || e == "." || e == ".." || e == "" {
			t.Errorf("EscapeSegment(%q) = %q: unsafe", s, e)
		}
		if prev, ok := seen[e]; ok {
			t.Errorf("EscapeSegment(%q) = EscapeSegment(%q) = %q", s, prev, e)
		}
		seen[e] = s
	}
}

func TestParseName(t *testing.T) {
	for _, tt := range []struct {
		in     string
		stream string
		seq    int
		bad    bool
	}{
		{in: "p/a/j/t/stdout.0", stream: "stdout"},
		{in: "stderr.12", stream: "stderr", seq: 12},
		{in: "p/a/j/t/stdout.3.gz", stream: "stdout", seq: 3},
		{in: "stdout.3.gz.gz", bad: true},
		{in: "stdout.gz", bad: true},
		{in: "stdout.-1", bad: true},
		{in: "stdout.01", bad: true},
		{in: "stdin.1", bad: true},
		{in: "stdout", bad: true},
	} {
		s, n, err := ParseName(tt.in)
		if (err != nil) != tt.bad || s != tt.stream || n != tt.seq {
			t.Errorf("ParseName(%q) = %q, %d, %v", tt.in, s, n, err)
		}
	}
}

func TestUnescapeSegment(t *testing.T) {
	for _, v := range []string{"", "_", "billing", "a/b", "..", ".", "50%", "ünï", "a b", "%2F"} {
		got, err := UnescapeSegment(EscapeSegment(v))
		if err != nil || got != v {
			t.Errorf("UnescapeSegment(EscapeSegment(%q)) = %q, %v", v, got, err)
		}
	}
	for _, seg := range []string{"%", "%2", "%zz", "%2f", "%61", "a/b", "..", "", "%5"} {
		if v, err := UnescapeSegment(seg); err == nil {
			t.Errorf("UnescapeSegment(%q) = %q, want an error", seg, v)
		}
	}
}
