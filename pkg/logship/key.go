package logship

import (
	"fmt"
	"strconv"
	"strings"
)

// Streams a task's logs are shipped as.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// KeyRef names one shipped log file.
type KeyRef struct {
	// Prefix is the configured key prefix (logship.prefix), may be empty.
	Prefix string
	// App and Job come from the task's titus.job/application and
	// titus.job/id labels; empty for tasks not launched by the scheduler.
	App, Job string
	Task     string
	// Stream is StreamStdout or StreamStderr.
	Stream string
	// Seq is the file's rotation sequence, from 0; the task's final file
	// has the next one after its last rotated file.
	Seq int
	// Gzip: the object is the file gzip-compressed; its key ends in
	// GzipSuffix.
	Gzip bool
}

// GzipSuffix ends the key of a file shipped gzip-compressed.
const GzipSuffix = ".gz"

// Key is the S3 object key of one log file:
//
//	<prefix>/<app>/<job>/<task>/<stream>.<N>[.gz]
//
// Each of app, job and task is one path segment (see EscapeSegment), so no
// value of theirs can reach another task's keys. An empty prefix drops the
// leading segment.
func Key(r KeyRef) string {
	k := TaskPrefix(r.Prefix, r.App, r.Job, r.Task) + r.Stream + "." + strconv.Itoa(r.Seq)
	if r.Gzip {
		k += GzipSuffix
	}
	return k
}

// IsGzip reports whether key names a file shipped gzip-compressed.
func IsGzip(key string) bool { return strings.HasSuffix(key, GzipSuffix) }

// jobIndexSegment is the first segment (after the prefix) of the job
// index. EscapeSegment never makes a segment with a '!', so no
// application's keys can be taken for the index, nor the index for an
// application.
const jobIndexSegment = "!jobs"

// JobIndexPrefix is the prefix, ending in "/", of the job index entries of
// job: list it to find the application(s) under which the job's tasks
// have logs, with one request.
func JobIndexPrefix(prefix, job string) string {
	var b strings.Builder
	if p := strings.Trim(prefix, "/"); p != "" {
		b.WriteString(p)
		b.WriteByte('/')
	}
	b.WriteString(jobIndexSegment)
	b.WriteByte('/')
	b.WriteString(EscapeSegment(job))
	b.WriteByte('/')
	return b.String()
}

// JobIndexKey is the job index entry saying that job has logs under
// application app: an empty object at
//
//	<prefix>/!jobs/<job>/<app>
//
// written by the agent before the first upload of each of the job's tasks.
func JobIndexKey(prefix, app, job string) string {
	return JobIndexPrefix(prefix, job) + EscapeSegment(app)
}

// TaskPrefix is the prefix, ending in "/", of all the keys of one task:
// list it to find a task's shipped files.
func TaskPrefix(prefix, app, job, task string) string {
	var b strings.Builder
	if p := strings.Trim(prefix, "/"); p != "" {
		b.WriteString(p)
		b.WriteByte('/')
	}
	for _, s := range []string{app, job, task} {
		b.WriteString(EscapeSegment(s))
		b.WriteByte('/')
	}
	return b.String()
}

// ParseName reads the last segment of a key, "<stream>.<N>" or
// "<stream>.<N>.gz", back into its stream and sequence. Remote readers
// sort a task's files by it.
func ParseName(name string) (stream string, seq int, err error) {
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	name = strings.TrimSuffix(name, GzipSuffix)
	s, n, ok := strings.Cut(name, ".")
	if !ok || (s != StreamStdout && s != StreamStderr) {
		return "", 0, fmt.Errorf("logship: %q is not <stdout|stderr>.<N>", name)
	}
	seq, err = strconv.Atoi(n)
	if err != nil || seq < 0 || strconv.Itoa(seq) != n {
		return "", 0, fmt.Errorf("logship: %q is not <stdout|stderr>.<N>", name)
	}
	return s, seq, nil
}

// EscapeSegment makes s one safe key segment, one-to-one: letters, digits,
// '-', '_' and '.' stay; every other byte (including '/' and '%') becomes
// %XX; a segment made only of dots has its dots escaped (no "." or ".."),
// an empty value is "_" and a value that is "_" is "%5F".
func EscapeSegment(s string) string {
	switch {
	case s == "":
		return "_"
	case s == "_":
		return "%5F"
	case strings.Trim(s, ".") == "":
		return strings.Repeat("%2E", len(s))
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

// UnescapeSegment reads a key segment back into the value EscapeSegment
// made it from. A segment EscapeSegment never makes (a stray '%', a
// lower-case or needless escape) is an error: the mapping stays one-to-one,
// so a reader never takes a foreign key for one of a task's.
func UnescapeSegment(seg string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(seg); i++ {
		if seg[i] != '%' {
			b.WriteByte(seg[i])
			continue
		}
		if i+2 >= len(seg) {
			return "", fmt.Errorf("logship: key segment %q: truncated escape", seg)
		}
		v, err := strconv.ParseUint(seg[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("logship: key segment %q: bad escape", seg)
		}
		b.WriteByte(byte(v))
		i += 2
	}
	v := b.String()
	if seg == "_" {
		v = ""
	}
	if EscapeSegment(v) != seg {
		return "", fmt.Errorf("logship: %q is not an escaped key segment", seg)
	}
	return v, nil
}
