package logarchive

import (
	"context"
	"io"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
)

// fakeS3 is a bucket in memory; it records the prefixes listed. Keys in
// final carry the final metadata.
type fakeS3 struct {
	mu     sync.Mutex
	objs   map[string]string
	times  map[string]time.Time
	final  map[string]bool
	listed []string
}

func (f *fakeS3) put(k, v string, final bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.objs[k] = v
	if final {
		if f.final == nil {
			f.final = map[string]bool{}
		}
		f.final[k] = true
	}
}

func (f *fakeS3) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p := aws.ToString(in.Prefix)
	f.listed = append(f.listed, p)
	var keys []string
	for k := range f.objs {
		if strings.HasPrefix(k, p) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys) // S3 lists in key order: stdout.10 before stdout.2
	out := &s3.ListObjectsV2Output{}
	seen := map[string]bool{}
	for _, k := range keys {
		if d := aws.ToString(in.Delimiter); d != "" {
			if i := strings.Index(k[len(p):], d); i >= 0 {
				cp := k[:len(p)+i+len(d)]
				if !seen[cp] {
					seen[cp] = true
					out.CommonPrefixes = append(out.CommonPrefixes, types.CommonPrefix{Prefix: aws.String(cp)})
				}
				continue
			}
		}
		if in.MaxKeys != nil && int32(len(out.Contents)) >= *in.MaxKeys {
			break
		}
		out.Contents = append(out.Contents, types.Object{Key: aws.String(k), LastModified: aws.Time(f.times[k])})
	}
	return out, nil
}

func (f *fakeS3) meta(k string) map[string]string {
	if f.final[k] {
		return map[string]string{"titus-final": "true"}
	}
	return nil
}

func (f *fakeS3) GetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := aws.ToString(in.Key)
	return &s3.GetObjectOutput{Body: io.NopCloser(strings.NewReader(f.objs[k])), Metadata: f.meta(k)}, nil
}

func (f *fakeS3) HeadObject(_ context.Context, in *s3.HeadObjectInput, _ ...func(*s3.Options)) (*s3.HeadObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &s3.HeadObjectOutput{Metadata: f.meta(aws.ToString(in.Key))}, nil
}

func TestArchiveRead(t *testing.T) {
	now := time.Now()
	big := strings.Repeat("z", 3*chunk+1)
	f := &fakeS3{objs: map[string]string{
		"logs/billing/j1/j1.0.0/stdout.0":     "zero\n",
		"logs/billing/j1/j1.0.0/stdout.1":     "one\n",
		"logs/billing/j1/j1.0.0/stdout.2":     "two\n",
		"logs/billing/j1/j1.0.0/stdout.10":    big,
		"logs/billing/j1/j1.0.0/stdout.x":     "not a shipped file\n",
		"logs/billing/j1/j1.0.0/stderr.0":     "oops\n",
		"logs/billing/j1/j1.0.0/stdout.3.tmp": "no\n",
	}, times: map[string]time.Time{
		"logs/billing/j1/j1.0.0/stdout.0":  now.Add(-3 * time.Hour),
		"logs/billing/j1/j1.0.0/stdout.1":  now.Add(-2 * time.Hour),
		"logs/billing/j1/j1.0.0/stdout.2":  now.Add(-time.Hour),
		"logs/billing/j1/j1.0.0/stdout.10": now,
		"logs/billing/j1/j1.0.0/stderr.0":  now,
	}}
	a := New(f, "b", "logs")
	key := api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.0.0"}
	read := func(k api.LogKey, since time.Time) (string, string, error) {
		var b strings.Builder
		src := a.Source(k)
		_, err := a.Read(context.Background(), k, api.ArchiveRead{Since: since}, func(p []byte) error {
			if len(p) > chunk {
				t.Errorf("a chunk of %d bytes", len(p))
			}
			b.Write(p)
			return nil
		})
		return b.String(), src, err
	}
	got, src, err := read(key, time.Time{})
	if err != nil || got != "zero\none\ntwo\n"+big || src != "s3://b/logs/billing/j1/j1.0.0/stdout.*" {
		t.Errorf("stdout: %d bytes %.30q from %s, %v", len(got), got, src, err)
	}
	if got, _, _ := read(key, now.Add(-90*time.Minute)); got != "two\n"+big {
		t.Errorf("since 90m: %.30q", got)
	}
	if got, _, _ := read(api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.0.0", Stderr: true}, time.Time{}); got != "oops\n" {
		t.Errorf("stderr: %q", got)
	}
	if _, _, err := read(api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.1.0"}, time.Time{}); !errdefs.IsNotFound(err) {
		t.Errorf("a task with nothing shipped: %v", err)
	}
	// Attack: an application name that would climb into another's keys
	// stays one segment.
	f.listed = nil
	read(api.LogKey{Application: "x/../billing", JobID: "j1", TaskID: "j1.0.0"}, time.Time{})
	if diff := cmp.Diff([]string{"logs/x%2F..%2Fbilling/j1/j1.0.0/stdout."}, f.listed); diff != "" {
		t.Errorf("listed (-want +got):\n%s", diff)
	}
}

// follow runs a follow of k on a, with the sleep between listings
// replaced by tick (called with the round number), and returns what it
// sent and how it ended.
func follow(t *testing.T, a *Archive, k api.LogKey, since time.Time, ended func(context.Context) (bool, time.Time), tick func(round int)) (string, string, error) {
	t.Helper()
	round := 0
	a.sleep = func(ctx context.Context, _ time.Duration) error {
		round++
		if round > 100 {
			t.Fatal("the follow never ended")
		}
		tick(round)
		return ctx.Err()
	}
	var b strings.Builder
	end, err := a.Read(context.Background(), k, api.ArchiveRead{Follow: true, Since: since, TaskEnded: ended}, func(p []byte) error {
		b.Write(p)
		return nil
	})
	return b.String(), end, err
}

// TestArchiveFollow: a follow sends new objects as they are shipped, in
// order, and ends at the object marked final; once the task has ended
// and no new object came for the grace period, it ends saying so.
func TestArchiveFollow(t *testing.T) {
	now := time.Now()
	base := "logs/billing/j1/j1.0.0/"
	key := api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.0.0"}
	running := func(context.Context) (bool, time.Time) { return false, time.Time{} }

	// Shipped while following: stdout.1 and .2 in one round, then .3,
	// the final one. Never out of order: a late stdout.0 is not sent.
	f := &fakeS3{objs: map[string]string{base + "stdout.0": "zero\n", base + "stderr.0": "err\n"}, times: map[string]time.Time{}}
	a := New(f, "b", "logs")
	got, end, err := follow(t, a, key, time.Time{}, running, func(round int) {
		switch round {
		case 2:
			f.put(base+"stdout.2", "two\n", false)
			f.put(base+"stdout.1", "one\n", false)
		case 4:
			f.put(base+"stdout.3", "three\n", true)
		}
	})
	if err != nil || got != "zero\none\ntwo\nthree\n" || !strings.Contains(end, "final stdout is read") {
		t.Errorf("follow: %q, end %q, %v", got, end, err)
	}

	// The task ended; its final file never comes (its host is gone):
	// the follow ends once the grace period after the end has passed.
	clock := now
	a = New(f, "b", "logs").WithFollow(time.Second, 10*time.Second)
	a.now = func() time.Time { return clock }
	f2 := &fakeS3{objs: map[string]string{base + "stdout.0": "zero\n"}, times: map[string]time.Time{}}
	a.s3 = f2
	endedAt := now.Add(-5 * time.Second)
	rounds := 0
	got, end, err = follow(t, a, key, time.Time{}, func(context.Context) (bool, time.Time) { return true, endedAt }, func(int) {
		rounds++
		clock = clock.Add(time.Second)
	})
	if err != nil || got != "zero\n" || !strings.Contains(end, "did not reach S3 within 10s") || rounds != 5 {
		t.Errorf("follow of an ended task without its final file: %q, end %q, %v after %d rounds (want 5)", got, end, err, rounds)
	}

	// A task the scheduler forgot (ended at an unknown time, long ago):
	// one listing, then the follow ends.
	rounds = 0
	got, end, err = follow(t, a, key, time.Time{}, nil, func(int) { rounds++ })
	if err != nil || got != "zero\n" || end == "" || rounds != 0 {
		t.Errorf("follow of a forgotten task: %q, end %q, %v after %d rounds", got, end, err, rounds)
	}

	// --since skips old objects, yet a skipped final one still ends it.
	f3 := &fakeS3{objs: map[string]string{base + "stdout.0": "old\n"}, times: map[string]time.Time{base + "stdout.0": now.Add(-time.Hour)}, final: map[string]bool{base + "stdout.0": true}}
	a = New(f3, "b", "logs")
	got, end, err = follow(t, a, key, now.Add(-time.Minute), running, func(int) { t.Error("listed again after the final object") })
	if err != nil || got != "" || !strings.Contains(end, "final") {
		t.Errorf("follow since, final skipped: %q, end %q, %v", got, end, err)
	}

	// Nothing shipped and the task ended long ago: NotFound.
	a = New(&fakeS3{objs: map[string]string{}, times: map[string]time.Time{}}, "b", "logs")
	if _, _, err := follow(t, a, key, time.Time{}, nil, func(int) {}); !errdefs.IsNotFound(err) {
		t.Errorf("follow of a task with nothing shipped: %v", err)
	}
}

// TestArchiveApplications: the applications under which a task of a job
// the scheduler forgot has logs, asked only about those may accepts; an
// application segment that is not an escaped name, and "_" (tasks not
// from the scheduler), are never taken.
func TestArchiveApplications(t *testing.T) {
	f := &fakeS3{objs: map[string]string{
		"logs/billing/j1/j1.0.0/stdout.0":  "a",
		"logs/search/j1/j1.0.0/stdout.0":   "b",
		"logs/a%2Fb/j1/j1.0.0/stdout.0":    "c",
		"logs/bad%zz/j1/j1.0.0/stdout.0":   "d",
		"logs/_/j1/j1.0.0/stdout.0":        "e",
		"logs/billing/j2/j2.0.0/stdout.0":  "f",
		"logs/ads/j1/j1.0.0x/stdout.0":     "g",
		"other/billing/j1/j1.0.0/stdout.0": "h",
	}, times: map[string]time.Time{}}
	a := New(f, "b", "logs/")
	var asked []string
	apps, err := a.Applications(context.Background(), "j1", "j1.0.0", func(app string) bool {
		asked = append(asked, app)
		return app != "search"
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"a/b", "billing"}, apps); diff != "" {
		t.Errorf("applications (-want +got):\n%s", diff)
	}
	sort.Strings(asked)
	if diff := cmp.Diff([]string{"a/b", "ads", "billing", "search"}, asked); diff != "" {
		t.Errorf("may asked about (-want +got):\n%s", diff)
	}
	for _, p := range f.listed {
		if strings.Contains(p, "search/") {
			t.Errorf("listed %q, an application the caller may not read", p)
		}
	}
}
