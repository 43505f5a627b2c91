package logarchive

import (
	"context"
	"io"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
)

// fakeS3 is a bucket in memory; it records the prefixes listed.
type fakeS3 struct {
	objs   map[string]string
	times  map[string]time.Time
	listed []string
}

func (f *fakeS3) ListObjectsV2(_ context.Context, in *s3.ListObjectsV2Input, _ ...func(*s3.Options)) (*s3.ListObjectsV2Output, error) {
	f.listed = append(f.listed, aws.ToString(in.Prefix))
	var keys []string
	for k := range f.objs {
		if strings.HasPrefix(k, aws.ToString(in.Prefix)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys) // S3 lists in key order: stdout.10 before stdout.2
	out := &s3.ListObjectsV2Output{}
	for _, k := range keys {
		out.Contents = append(out.Contents, types.Object{Key: aws.String(k), LastModified: aws.Time(f.times[k])})
	}
	return out, nil
}

func (f *fakeS3) GetObject(_ context.Context, in *s3.GetObjectInput, _ ...func(*s3.Options)) (*s3.GetObjectOutput, error) {
	return &s3.GetObjectOutput{Body: io.NopCloser(strings.NewReader(f.objs[aws.ToString(in.Key)]))}, nil
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
		src, err := a.Read(context.Background(), k, since, func(p []byte) error {
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
