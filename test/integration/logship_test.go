package integration

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// s3Proxy stands between the agent and moto's S3: it can be down (every
// connection closed unanswered), slow each request, and it records the
// requests that complete an object (a PUT of a whole object, a
// CompleteMultipartUpload) by key.
type s3Proxy struct {
	URL   string
	down  atomic.Bool
	delay atomic.Int64 // per request, ns
	parts atomic.Int64 // UploadPart requests forwarded
	lists atomic.Int64 // ListParts requests forwarded

	mu        sync.Mutex
	completed map[string]int
	signers   map[string]int // access key ids that signed S3 requests
}

func startS3Proxy(t *testing.T, upstream string) *s3Proxy {
	t.Helper()
	u, _ := url.Parse(upstream)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &s3Proxy{URL: "http://" + l.Addr().String(), completed: map[string]int{}, signers: map[string]int{}}
	rp := httputil.NewSingleHostReverseProxy(u)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.down.Load() {
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		time.Sleep(time.Duration(p.delay.Load()))
		q := r.URL.Query()
		if r.URL.Path != "/" { // not STS
			if _, cred, ok := strings.Cut(r.Header.Get("Authorization"), "Credential="); ok {
				p.mu.Lock()
				p.signers[strings.SplitN(cred, "/", 2)[0]]++
				p.mu.Unlock()
			}
		}
		rec := &statusRecorder{ResponseWriter: w}
		rp.ServeHTTP(rec, r)
		key := strings.TrimPrefix(r.URL.Path, "/")
		switch {
		case r.Method == http.MethodPut && q.Has("partNumber"):
			p.parts.Add(1)
		case r.Method == http.MethodGet && q.Has("uploadId"):
			p.lists.Add(1)
		case rec.status == 200 && ((r.Method == http.MethodPut && !q.Has("uploadId")) || (r.Method == http.MethodPost && q.Has("uploadId"))):
			p.mu.Lock()
			p.completed[key]++
			p.mu.Unlock()
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return p
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(c int) { s.status = c; s.ResponseWriter.WriteHeader(c) }
func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = 200
	}
	return s.ResponseWriter.Write(b)
}

// logShipBed is moto with a bucket, the proxy in front of it and an agent
// shipping to it.
type logShipBed struct {
	*agentEnv
	s3      *s3.Client
	proxy   *s3Proxy
	bucket  string
	metrics string
	// high, emergency are logship.diskHighPercent, diskEmergencyPercent.
	high, emergency int
}

func startLogShipBed(t *testing.T, logs string, extra ...string) *logShipBed {
	t.Helper()
	moto := testenv.StartMoto(t)
	b := &logShipBed{bucket: "titus-logs-" + fmt.Sprint(time.Now().UnixNano()%1e6), high: 85, emergency: 95}
	role := ""
	if len(extra) > 0 && extra[0] == "role" {
		role, extra = extra[1], extra[2:]
	}
	if len(extra) > 0 && extra[0] == "thresholds" {
		fmt.Sscan(extra[1], &b.high)
		fmt.Sscan(extra[2], &b.emergency)
		extra = extra[3:]
	}
	b.s3 = s3.New(s3.Options{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		BaseEndpoint: aws.String(moto.Endpoint), UsePathStyle: true})
	if _, err := b.s3.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: &b.bucket}); err != nil {
		t.Fatal(err)
	}
	b.proxy = startS3Proxy(t, moto.Endpoint)
	b.metrics = testenv.Addr(testenv.FreePort(t))
	cfg := logs + fmt.Sprintf(`metricsListen: %q
logship:
  enabled: true
  bucket: %s
  prefix: tt
  endpoint: %s
  accessKeyID: testing
  secretAccessKey: testing
  interval: 200ms
  backoffBase: 200ms
  backoffMax: 1s
  partSizeMiB: 5
  multipartThresholdMiB: 6
  diskHighPercent: %d
  diskEmergencyPercent: %d
  roleARN: %q
`, b.metrics, b.bucket, b.proxy.URL, b.high, b.emergency, role)
	b.agentEnv = newAgentEnvConfig(t, cfg, extra...)
	return b
}

// objects lists the bucket's shipped files under prefix: key → content.
// A gzip'd file (key ending in .gz, the default) is read decompressed,
// under its key without the .gz. Job index entries are left out.
func (b *logShipBed) objects(prefix string) map[string]string {
	b.t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	pg := s3.NewListObjectsV2Paginator(b.s3, &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: &prefix})
	for pg.HasMorePages() {
		page, err := pg.NextPage(ctx)
		if err != nil {
			b.t.Fatalf("list bucket: %v", err)
		}
		for _, o := range page.Contents {
			obj, err := b.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: &b.bucket, Key: o.Key})
			if err != nil {
				b.t.Fatalf("get %s: %v", *o.Key, err)
			}
			body, _ := io.ReadAll(obj.Body)
			obj.Body.Close()
			k := *o.Key
			if strings.Contains(k, "/!jobs/") {
				continue
			}
			if logship.IsGzip(k) {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					b.t.Fatalf("%s: not gzip: %v", k, err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					b.t.Fatalf("%s: gunzip: %v", k, err)
				}
				k = strings.TrimSuffix(k, logship.GzipSuffix)
			}
			out[k] = string(body)
		}
	}
	return out
}

// keys lists the bucket's keys under prefix, sorted.
func (b *logShipBed) keys(prefix string) []string {
	b.t.Helper()
	out, err := b.s3.ListObjectsV2(context.Background(), &s3.ListObjectsV2Input{Bucket: &b.bucket, Prefix: &prefix})
	if err != nil {
		b.t.Fatalf("list bucket: %v", err)
	}
	var ks []string
	for _, o := range out.Contents {
		ks = append(ks, *o.Key)
	}
	sort.Strings(ks)
	return ks
}

// waitKeys waits until the bucket holds n keys under prefix.
func (b *logShipBed) waitKeys(prefix string, n int, timeout time.Duration) []string {
	b.t.Helper()
	deadline := time.Now().Add(testenv.Scaled(timeout))
	for {
		ks := b.keys(prefix)
		if len(ks) >= n {
			return ks
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("bucket has %v under %s, want %d keys\nagent log:\n%s", ks, prefix, n, b.agent.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// joined concatenates a task's shipped stdout files in sequence order and
// checks the sequence has no gap.
func joined(t *testing.T, objs map[string]string, prefix string) string {
	t.Helper()
	var sb strings.Builder
	for i := 0; i < len(objs); i++ {
		body, ok := objs[fmt.Sprintf("%sstdout.%d", prefix, i)]
		if !ok {
			keys := make([]string, 0, len(objs))
			for k := range objs {
				keys = append(keys, k)
			}
			t.Fatalf("no %sstdout.%d among %v", prefix, i, keys)
		}
		sb.WriteString(body)
	}
	return sb.String()
}

// numbered is what `seq -w 1 n | sed 's/$/ <pad>/'` prints.
func numbered(n int, pad string) string {
	var sb strings.Builder
	w := len(fmt.Sprint(n))
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&sb, "%0*d %s\n", w, i, pad)
	}
	return sb.String()
}

// TestLogShipKill9MidUpload: a task's rotated log files reach S3 while it
// runs and its last file when it ends; an agent killed -9 in the middle
// of a multipart upload resumes it, and the bucket holds every line
// exactly once, each file completed once.
func TestLogShipKill9MidUpload(t *testing.T) {
	begin(t)
	b := startLogShipBed(t, "logs:\n  maxSizeMiB: 12\n  maxFiles: 2\n")
	// Numbered lines of random hex, 71 bytes each: ~25 MiB, two 12 MiB
	// files and the rest; gzip leaves ~7 MiB of each, so each rotated file
	// is shipped compressed in two parts (partSizeMiB 5, threshold 6).
	const lines = 370000
	spec := b.spec("ship-kill", "sh", "-c", fmt.Sprintf(`awk 'BEGIN { srand(7); for (i = 1; i <= %d; i++) {
		printf "%%07d", i; for (j = 0; j < 7; j++) printf " %%04x%%04x", rand() * 65536, rand() * 65536; printf "\n" } }'; echo done-writing; exec sleep 600`, lines))
	spec.Labels = map[string]string{task.LabelApplication: "shop", task.LabelJobID: "job-1"}
	b.proxy.delay.Store(int64(150 * time.Millisecond))
	b.launch(spec)
	prefix := logship.TaskPrefix("tt", "shop", "job-1", "ship-kill")

	// Kill the agent once the second file's parts are going up.
	deadline := time.Now().Add(testenv.Scaled(45 * time.Second))
	for b.proxy.parts.Load() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d parts uploaded\nagent log:\n%s", b.proxy.parts.Load(), b.agent.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.kill9()
	b.proxy.delay.Store(0)
	b.start()

	// The two rotated files arrive while the task still runs.
	ks := b.waitKeys(prefix, 2, 45*time.Second)
	if len(ks) != 2 {
		t.Fatalf("keys while running: %v, want stdout.0-1 only", ks)
	}
	waitShip(t, 30*time.Second, func() bool {
		cur, _ := os.ReadFile(filepath.Join(b.dir, "logs", "ship-kill", "stdout.log"))
		return bytes.Contains(cur, []byte("done-writing"))
	}, "the task done writing")
	if st := b.get("ship-kill").GetState(); st != stRunning {
		t.Fatalf("task %s, want running", st)
	}
	if _, err := b.client.KillTask(b.ctx(), &agentv1.KillTaskRequest{Id: "ship-kill"}); err != nil {
		t.Fatal(err)
	}
	b.waitFinal("ship-kill")
	ks = b.waitKeys(prefix, 3, 30*time.Second)
	objs := b.objects(prefix)
	checkNumbered(t, joined(t, objs, prefix), lines, "done-writing")
	if len(objs) != 3 {
		t.Errorf("%d objects, want 3", len(objs))
	}
	for _, k := range ks {
		if !logship.IsGzip(k) {
			t.Errorf("%s: not shipped gzip'd (the default)", k)
		}
	}
	if got, want := b.keys("tt/!jobs/"), []string{logship.JobIndexKey("tt", "shop", "job-1")}; !slices.Equal(got, want) {
		t.Errorf("job index %v, want %v", got, want)
	}
	if b.proxy.lists.Load() == 0 {
		t.Errorf("the restarted agent did not resume the cut multipart upload (no ListParts)")
	}
	b.proxy.mu.Lock()
	for k, n := range b.proxy.completed {
		if n != 1 {
			t.Errorf("%s completed %d times, want once", k, n)
		}
	}
	b.proxy.mu.Unlock()
	// All shipped: only logs.maxFiles rotated files stay on the host.
	waitShip(t, 10*time.Second, func() bool { return len(rotatedOnHost(b.dir, "ship-kill")) <= 2 }, "rotated files kept beyond logs.maxFiles")
}

// checkNumbered checks that got is lines lines numbered 1..lines in order
// (each "%07d ..."), each once, then the line last.
func checkNumbered(t *testing.T, got string, lines int, last string) {
	t.Helper()
	ls := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(ls) != lines+1 || ls[lines] != last {
		t.Fatalf("shipped logs: %d lines (want %d and %q), ending %q (lost or duplicated lines)", len(ls), lines+1, last, ls[len(ls)-1])
	}
	for i, l := range ls[:lines] {
		if !strings.HasPrefix(l, fmt.Sprintf("%07d ", i+1)) || len(l) != 70 {
			t.Fatalf("line %d of the shipped logs is %q (lost or duplicated lines)", i+1, l)
		}
	}
}

func rotatedOnHost(agentDir, id string) []string {
	ents, _ := os.ReadDir(filepath.Join(agentDir, "logs", id))
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "stdout-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func waitShip(t *testing.T, timeout time.Duration, ok func() bool, what string) {
	t.Helper()
	deadline := time.Now().Add(testenv.Scaled(timeout))
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestLogShipOutageThenRecovery: while S3 is unreachable the agent backs
// off, keeps every unshipped file (beyond logs.maxFiles) and ships them
// all once S3 is back, signed with the configured role's credentials.
func TestLogShipOutageThenRecovery(t *testing.T) {
	begin(t)
	b := startLogShipBed(t, "logs:\n  maxSizeMiB: 1\n  maxFiles: 1\n", "role", "arn:aws:iam::123456789012:role/log-shipper")
	b.proxy.down.Store(true)
	const lines = 60000 // ~3.7 MiB: three rotated files and the rest
	pad := strings.Repeat("y", 56)
	b.launch(b.spec("ship-outage", "sh", "-c", fmt.Sprintf("seq -w 1 %d | sed 's/$/ %s/'", lines, pad)))
	b.waitFinal("ship-outage")
	waitShip(t, 20*time.Second, func() bool {
		return metricValue(scrape(t, b.metrics), "titus_logship_upload_errors_total") >= 3
	}, "upload errors while S3 is down")
	page := scrape(t, b.metrics)
	if n := metricValue(page, "titus_logship_backlog_files"); n != 4 {
		t.Errorf("backlog files = %v, want 4 (3 rotated + the last)", n)
	}
	if age := metricValue(page, "titus_logship_oldest_unshipped_age_seconds"); age <= 0 {
		t.Errorf("oldest unshipped age = %v", age)
	}
	if got := rotatedOnHost(b.dir, "ship-outage"); len(got) != 3 {
		t.Errorf("rotated files on the host while S3 is down: %v, want all 3 (none deleted unshipped)", got)
	}
	if ks := b.keys(""); len(ks) != 0 {
		t.Fatalf("keys while down: %v", ks)
	}
	b.proxy.down.Store(false)
	prefix := logship.TaskPrefix("tt", "", "", "ship-outage")
	b.waitKeys(prefix, 4, 30*time.Second)
	if got := joined(t, b.objects(prefix), prefix); got != numbered(lines, pad) {
		t.Fatalf("shipped logs: %d bytes, want %d", len(got), len(numbered(lines, pad)))
	}
	waitShip(t, 10*time.Second, func() bool {
		p := scrape(t, b.metrics)
		return metricValue(p, "titus_logship_backlog_files") == 0 && metricValue(p, "titus_logship_shipped_files_total") == 4
	}, "backlog 0 and 4 files shipped in the metrics")
	if n := metricValue(scrape(t, b.metrics), "titus_logship_emergency_deleted_files_total"); n != 0 {
		t.Errorf("emergency deletions = %v", n)
	}
	b.proxy.mu.Lock()
	defer b.proxy.mu.Unlock()
	for k := range b.proxy.signers {
		if !strings.HasPrefix(k, "ASIA") {
			t.Errorf("S3 request signed by %s, want the role's session keys (ASIA...): %v", k, b.proxy.signers)
		}
	}
	if len(b.proxy.signers) == 0 {
		t.Errorf("no signed S3 request seen")
	}
}

// TestLogShipAttack: a link planted in a task's log dir (to a host file)
// is never read; label values cannot reach another task's keys; a task
// that opts out ships nothing; malformed shipping labels and a task id
// with a path fail the launch with a clear error.
func TestLogShipAttack(t *testing.T) {
	begin(t)
	b := startLogShipBed(t, "logs:\n  maxSizeMiB: 1\n  maxFiles: 2\n")
	secret := filepath.Join(t.TempDir(), "host-secret")
	if err := os.WriteFile(secret, []byte("HOST-SECRET-VALUE\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The victim's logs are shipped first.
	victim := b.spec("victim", "sh", "-c", "echo victim-line")
	victim.Labels = map[string]string{task.LabelApplication: "bank", task.LabelJobID: "j"}
	b.launch(victim)
	b.waitFinal("victim")
	vprefix := logship.TaskPrefix("tt", "bank", "j", "victim")
	b.waitKeys(vprefix, 1, 20*time.Second)

	// The attacker names itself after the victim's keys and gets links
	// into its log dir while it runs.
	evil := b.spec("evil", "sh", "-c", "echo evil-line; sleep 3")
	evil.Labels = map[string]string{task.LabelApplication: "bank/j/victim", task.LabelJobID: ".."}
	b.launch(evil)
	b.waitState("evil", stRunning, 30*time.Second)
	dir := filepath.Join(b.dir, "logs", "evil")
	if err := os.Symlink(secret, filepath.Join(dir, "stdout-2000-01-01T00-00-00.000.log")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(secret, filepath.Join(dir, "stdout-2000-01-01T00-00-01.000.log")); err != nil {
		t.Fatal(err)
	}
	quiet := b.spec("quiet", "sh", "-c", "echo quiet-line")
	quiet.Labels = map[string]string{task.LabelLogShip: "false"}
	b.launch(quiet)
	b.waitFinal("evil")
	b.waitFinal("quiet")
	eprefix := logship.TaskPrefix("tt", "bank/j/victim", "..", "evil")
	b.waitKeys(eprefix, 1, 20*time.Second)
	time.Sleep(time.Second) // a few more rounds
	all := b.objects("")
	for k, v := range all {
		if strings.Contains(v, "HOST-SECRET") {
			t.Errorf("%s holds the host file", k)
		}
		if strings.Contains(v, "quiet-line") {
			t.Errorf("%s holds an opted-out task's log", k)
		}
	}
	if got := all[vprefix+"stdout.0"]; got != "victim-line\n" {
		t.Errorf("victim's log = %q (overwritten?)", got)
	}
	if len(b.keys(vprefix)) != 1 {
		t.Errorf("victim's keys: %v", b.keys(vprefix))
	}
	if got := all[eprefix+"stdout.0"]; got != "evil-line\n" {
		t.Errorf("attacker's own log at %s = %q; bucket %v", eprefix, got, b.keys(""))
	}
	// Each task's job index entry is its own job's, under its own
	// application, one segment each.
	wantIndex := []string{logship.JobIndexKey("tt", "bank/j/victim", ".."), logship.JobIndexKey("tt", "bank", "j")}
	if got := b.keys("tt/!jobs/"); !slices.Equal(got, wantIndex) {
		t.Errorf("job index %v, want %v", got, wantIndex)
	}
	if n := metricValue(scrape(t, b.metrics), "titus_logship_refused_entries_total"); n != 2 {
		t.Errorf("refused entries = %v, want 2", n)
	}

	for _, tc := range []struct {
		id     string
		labels map[string]string
		want   string
	}{
		{"bad-cap", map[string]string{task.LabelLogShipMaxMiB: "lots"}, "titus.logs/max-mib"},
		{"bad-ship", map[string]string{task.LabelLogShip: "maybe"}, "titus.logs/ship"},
		{"../victim", nil, "id"},
	} {
		s := b.spec(tc.id, "true")
		s.Labels = tc.labels
		_, err := b.client.LaunchTask(b.ctx(), &agentv1.LaunchTaskRequest{Spec: s})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("launch %s: %v, want an error naming %s", tc.id, err, tc.want)
		}
	}
}

// TestLogShipFullDisk: on a small real log filesystem with S3 down,
// shipped files are deleted first; unshipped ones only past the
// emergency threshold, oldest first, counted and logged; they are never
// shipped later, and the rest are once S3 is back.
func TestLogShipFullDisk(t *testing.T) {
	begin(t)
	logs, err := os.MkdirTemp("/tmp", "tlogs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(logs) })
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "titus-logship-test", logs).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", logs).Run() })
	b := startLogShipBed(t, "logs:\n  maxSizeMiB: 1\n  maxFiles: 100\n", "thresholds", "50", "75", "--log-dir", logs)
	pad := strings.Repeat("z", 56)
	// A's 8 MiB are shipped and kept (maxFiles 100).
	b.launch(b.spec("disk-a", "sh", "-c", fmt.Sprintf("seq -w 1 %d | sed 's/$/ %s/'", 130000, pad)))
	b.waitFinal("disk-a")
	aprefix := logship.TaskPrefix("tt", "", "", "disk-a")
	b.waitKeys(aprefix, 8, 30*time.Second) // 7 rotated + the last
	if n := len(rotatedIn(logs, "disk-a")); n != 7 {
		t.Fatalf("A's shipped files kept: %d, want its 7 rotated ones", n)
	}
	// S3 goes down; B writes 22 MiB slowly enough for the shipper's rounds.
	b.proxy.down.Store(true)
	b.launch(b.spec("disk-b", "sh", "-c", fmt.Sprintf("for i in $(seq 1 22); do seq -w 1 16000 | sed \"s/$/ $i %s/\"; sleep 0.3; done", pad)))
	b.waitFinal("disk-b")
	waitShip(t, 20*time.Second, func() bool {
		return metricValue(scrape(t, b.metrics), "titus_logship_emergency_deleted_files_total") > 0
	}, "emergency deletions")
	if n := len(rotatedIn(logs, "disk-a")); n != 0 {
		t.Errorf("A's shipped files still on disk: %d (they go first)", n)
	}
	page := scrape(t, b.metrics)
	if n := metricValue(page, `titus_logship_removed_files_total{reason="disk_pressure"}`); n < 7 {
		t.Errorf("removed under pressure = %v, want A's files", n)
	}
	emergency := metricValue(page, "titus_logship_emergency_deleted_files_total")
	if !strings.Contains(b.agent.Log(), "log disk past the emergency threshold") {
		t.Errorf("no emergency deletion logged")
	}
	var st syscall.Statfs_t
	syscall.Statfs(logs, &st)
	if used := 1 - float64(st.Bfree)/float64(st.Blocks); used > 0.80 {
		t.Errorf("log disk %.0f%% used, want about the 75%% emergency mark", used*100)
	}
	kept := rotatedIn(logs, "disk-b")
	b.proxy.down.Store(false)
	bprefix := logship.TaskPrefix("tt", "", "", "disk-b")
	waitShip(t, 30*time.Second, func() bool {
		return metricValue(scrape(t, b.metrics), "titus_logship_backlog_files") == 0
	}, "backlog drained")
	got := b.keys(bprefix)
	t.Logf("B: %v files deleted unshipped past the emergency mark, %d kept and then shipped (+ the last)", emergency, len(kept))
	// Every file not deleted is shipped (+1: the last one); the deleted
	// ones, the oldest, never are.
	if len(got) != len(kept)+1 {
		t.Errorf("B shipped %d files, %d were kept on disk (+ the last)", len(got), len(kept))
	}
	if float64(len(got))+emergency < 22 {
		t.Errorf("B: %d shipped + %v dropped, want its 22+ files accounted for", len(got), emergency)
	}
	for _, k := range got {
		if _, seq, _ := logship.ParseName(k); seq < int(emergency) {
			t.Errorf("%s shipped, but the %v oldest were deleted unshipped", k, emergency)
		}
	}
}

func rotatedIn(logDir, id string) []string {
	ents, _ := os.ReadDir(filepath.Join(logDir, id))
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "stdout-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestLogShipQuotaDiskTask: a task with a disk quota keeps its logs on
// its own disk, which goes away at teardown; with S3 down meanwhile, its
// unshipped files are spooled first and all arrive once S3 is back.
func TestLogShipQuotaDiskTask(t *testing.T) {
	begin(t)
	b := startLogShipBed(t, "logs:\n  maxSizeMiB: 1\n  maxFiles: 1\n")
	b.proxy.down.Store(true)
	const lines = 50000 // ~3 MiB
	pad := strings.Repeat("q", 56)
	s := b.spec("quota-ship", "sh", "-c", fmt.Sprintf("seq -w 1 %d | sed 's/$/ %s/'", lines, pad))
	s.Resources.DiskMib = 32
	b.launch(s)
	if fi, err := os.Lstat(filepath.Join(b.dir, "logs", "quota-ship")); err == nil && fi.Mode()&os.ModeSymlink == 0 {
		t.Logf("log dir is not a link into the disk (backend without one?)")
	}
	b.waitFinal("quota-ship")
	b.waitNoContainer("quota-ship")
	waitShip(t, 20*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(b.dir, "disks", "mnt", "quota-ship"))
		return os.IsNotExist(err)
	}, "the task's disk torn down")
	if ks := b.keys(""); len(ks) != 0 {
		t.Fatalf("keys while S3 is down: %v", ks)
	}
	b.proxy.down.Store(false)
	prefix := logship.TaskPrefix("tt", "", "", "quota-ship")
	waitShip(t, 30*time.Second, func() bool {
		return metricValue(scrape(t, b.metrics), "titus_logship_backlog_files") == 0
	}, "backlog drained")
	objs := b.objects(prefix)
	if got, want := joined(t, objs, prefix), numbered(lines, pad); got != want {
		t.Fatalf("shipped logs of the quota'd task: %d bytes in %d files, want %d", len(got), len(objs), len(want))
	}
	if len(objs) < 3 {
		t.Errorf("%d files shipped, want the rotated ones and the last", len(objs))
	}
	if ents, _ := os.ReadDir(filepath.Join(b.dir, "logs", ".logship", "quota-ship")); len(ents) != 0 {
		t.Errorf("spool not emptied: %d entries", len(ents))
	}
}
