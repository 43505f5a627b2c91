package logarchive

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/containerd/errdefs"
	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/gzip"

	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
)

func gz(s string) string {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	zw.Write([]byte(s))
	zw.Close()
	return b.String()
}

// A task's files shipped gzip'd (.gz keys) are read decompressed, in
// sequence with plain ones (shipped before compression was on); a follow
// ends at a final .gz object; an object that is not gzip is DataLoss,
// never sent as is.
func TestArchiveReadsGzip(t *testing.T) {
	p := "logs/billing/j1/j1.0.0/"
	f := &fakeS3{objs: map[string]string{
		p + "stdout.0":     "plain zero\n",
		p + "stdout.1.gz":  gz("one\n"),
		p + "stdout.2.gz":  gz(strings.Repeat("two\n", 20000)),
		p + "stderr.0.gz":  "not gzip at all",
		p + "stdout.x.gz":  gz("not a shipped file\n"),
		p + "stdout.3.tgz": gz("no\n"),
	}, times: map[string]time.Time{}}
	f.put(p+"stdout.3.gz", gz("the end\n"), true)
	a := New(f, "b", "logs")
	key := api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.0.0"}
	var b strings.Builder
	end, err := a.Read(context.Background(), key, api.ArchiveRead{Follow: true}, func(p []byte) error {
		if len(p) > chunk {
			t.Errorf("a chunk of %d bytes", len(p))
		}
		b.Write(p)
		return nil
	})
	want := "plain zero\none\n" + strings.Repeat("two\n", 20000) + "the end\n"
	if err != nil || b.String() != want || !strings.Contains(end, "final") {
		t.Errorf("read %d bytes (want %d), end %q, %v", b.Len(), len(want), end, err)
	}
	b.Reset()
	_, err = a.Read(context.Background(), api.LogKey{Application: "billing", JobID: "j1", TaskID: "j1.0.0", Stderr: true}, api.ArchiveRead{}, func(p []byte) error {
		b.Write(p)
		return nil
	})
	if !errdefs.IsDataLoss(err) || b.Len() != 0 {
		t.Errorf("a .gz object that is not gzip: sent %q, %v; want DataLoss, nothing sent", b.String(), err)
	}
}

// TestArchiveApplicationsFromTheJobIndex: a job the scheduler forgot is
// found under its application with one listing of the job index, for a
// caller who may read that application. The attack: for another tenant
// the index's entry is not taken; the scan that follows asks only about
// the caller's own applications (nothing is listed under the other's),
// and the work and the answer are the same as for a job that does not
// exist. Logs shipped before the index existed are found by the scan.
func TestArchiveApplicationsFromTheJobIndex(t *testing.T) {
	f := &fakeS3{objs: map[string]string{
		logship.JobIndexKey("logs", "billing", "j1"): "",
		"logs/billing/j1/j1.0.0/stdout.0.gz":         gz("a"),
		"logs/search/s1/s1.0.0/stdout.0.gz":          gz("s"),
		"logs/billing/old/old.0.0/stdout.0":          "shipped before the index",
		logship.JobIndexKey("logs", "billing", "j2"): "",
		logship.JobIndexKey("logs", "search", "j2"):  "", // hand-made: two applications
		"logs/search/j2/j2.0.0/stdout.0.gz":          gz("b"),
		logship.JobIndexKey("logs", "", "j3"):        "", // never taken
		"logs/!jobs/j4/bad%zz":                       "",
	}, times: map[string]time.Time{}}
	a := New(f, "b", "logs")
	everyone := func(string) bool { return true }
	searchOnly := func(app string) bool { return app == "search" }
	ask := func(jobID, taskID string, may func(string) bool) ([]string, []string) {
		t.Helper()
		f.listed = nil
		apps, err := a.Applications(context.Background(), jobID, taskID, may)
		if err != nil {
			t.Fatal(err)
		}
		return apps, f.listed
	}

	apps, listed := ask("j1", "j1.0.0", everyone)
	if diff := cmp.Diff([]string{"billing"}, apps); diff != "" {
		t.Errorf("admin, indexed job (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"logs/!jobs/j1/"}, listed); diff != "" {
		t.Errorf("admin, indexed job: listed (-want +got):\n%s", diff)
	}

	// The attack: search's owner asks for billing's job, and for one
	// that does not exist.
	apps, listed = ask("j1", "j1.0.0", searchOnly)
	_, none := ask("0190-none", "0190-none.0.0", searchOnly)
	if len(apps) != 0 {
		t.Errorf("another tenant got %v", apps)
	}
	for _, p := range listed {
		if strings.Contains(p, "billing") {
			t.Errorf("listed %q for a caller who may not read billing", p)
		}
	}
	norm := func(ps []string, job string) []string {
		var out []string
		for _, p := range ps {
			out = append(out, strings.ReplaceAll(p, job, "JOB"))
		}
		return out
	}
	if diff := cmp.Diff(norm(none, "0190-none"), norm(listed, "j1")); diff != "" {
		t.Errorf("another tenant's job vs a job that does not exist: listings differ (-none +other's):\n%s", diff)
	}

	// Shipped before the index: the scan finds it.
	apps, listed = ask("old", "old.0.0", everyone)
	if diff := cmp.Diff([]string{"billing"}, apps); diff != "" {
		t.Errorf("job without an index entry (-want +got):\n%s", diff)
	}
	if len(listed) < 3 {
		t.Errorf("no scan for a job without an index entry: %v", listed)
	}
	// Two applications in the index: the ones holding the task; for one
	// who may read only search, search.
	if apps, _ := ask("j2", "j2.0.0", everyone); !cmp.Equal([]string{"search"}, apps) {
		t.Errorf("j2 for an admin: %v", apps)
	}
	if apps, _ := ask("j2", "j2.0.0", searchOnly); !cmp.Equal([]string{"search"}, apps) {
		t.Errorf("j2 for search: %v", apps)
	}
	if apps, _ := ask("j3", "j3.0.0", everyone); len(apps) != 0 {
		t.Errorf("an index entry of application _ taken: %v", apps)
	}
}
