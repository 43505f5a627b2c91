package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/pkg/task"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("logship", 47, func(tb *testenv.Standalone, f benchFlags) { benchLogShip(tb, min(f.n, 5)) })
}

// logShipBytes is what each task writes: 192 MiB of access-log-like
// lines, twelve 16 MiB rotations, so uploads run during most of the write.
const logShipBytes = 192 << 20

// benchLogShip measures the log throughput a task gets while the agent
// ships its rotated files to S3 (moto) against a task of the same agent
// that opted out (titus.logs/ship=false), interleaved in the same run.
// Each measurement starts with no upload backlog, so the baseline runs
// with no upload beside it.
func benchLogShip(tb *testenv.Standalone, n int) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")
	moto := testenv.StartMoto(tb)
	bucket := "bench-logs"
	s3c := s3.New(s3.Options{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", ""),
		BaseEndpoint: aws.String(moto.Endpoint), UsePathStyle: true})
	if _, err := s3c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		tb.Fatalf("create bucket: %v", err)
	}
	metrics := testenv.Addr(testenv.FreePort(tb))
	a := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: fmt.Sprintf(`logLevel: %s
metricsListen: %q
logs:
  maxSizeMiB: 16
  maxFiles: 2
logship:
  enabled: true
  bucket: %s
  endpoint: %s
  accessKeyID: testing
  secretAccessKey: testing
  interval: 500ms
`, agentLogLevel, metrics, bucket, moto.Endpoint)})
	events, err := watch(ctx, a)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	// A 4,000-line block (~400 KiB, beyond gzip's 32 KiB window) of
	// access-log-like lines with random ids, sizes and timings, written
	// over and over: it compresses about as well as real text logs do,
	// where one line repeated would flatter logship.compression.
	gen := `awk 'BEGIN{srand(7); split("GET POST PUT DELETE",m," "); split("INFO INFO INFO INFO WARN DEBUG ERROR",l," ");
for(i=0;i<4000;i++) printf "2026-12-03T17:%02d:%02d.%06dZ %s req=%08x user=u%d %s /api/v1/items/%d status=%d bytes=%d took=%dms\n",
int(i/60)%60, i%60, int(rand()*1000000), l[1+int(rand()*7)], int(rand()*2147483647), int(rand()*500), m[1+int(rand()*4)],
int(rand()*100000), (rand()<0.95?200:503), int(rand()*20000), int(rand()*300)}'`
	var agentCPU, motoCPU float64
	run := func(id string, ship bool) float64 {
		if ship {
			agentCPU -= cpuSeconds(a.Pid())
			motoCPU -= cpuSeconds(moto.Proc.Cmd.Process.Pid)
		}
		s := &agentv1.TaskSpec{Id: id, OwnerEmail: "bench@example.com", Image: image,
			Command:   []string{"sh", "-c", fmt.Sprintf("b=$(%s); while :; do printf '%%s\\n' \"$b\"; done | head -c %d", gen, logShipBytes)},
			Resources: &agentv1.Resources{CpuMillicores: 2000, MemoryMib: 64}, KillGracePeriodSeconds: 1,
			Labels: map[string]string{task.LabelLogShip: strconv.FormatBool(ship)}}
		wait := events.expect(id)
		if _, err := a.Client.LaunchTask(ctx, &agentv1.LaunchTaskRequest{Spec: s}); err != nil {
			tb.Fatalf("launch %s: %v", id, err)
		}
		<-wait // running
		var tk *agentv1.Task
		deadline := time.Now().Add(5 * time.Minute)
		for {
			tk, err = a.Client.GetTask(ctx, &agentv1.GetTaskRequest{Id: id})
			if err == nil && tk.GetState() >= agentv1.TaskState_TASK_STATE_FINISHED {
				break
			}
			if time.Now().After(deadline) {
				tb.Fatalf("task %s did not finish: %v %s", id, err, a.Log())
			}
			time.Sleep(20 * time.Millisecond)
		}
		if tk.GetState() != agentv1.TaskState_TASK_STATE_FINISHED {
			tb.Fatalf("task %s: %s %s %s", id, tk.GetState(), tk.GetReason(), tk.GetMessage())
		}
		var started, ended time.Time
		for _, tr := range tk.GetTransitions() {
			switch tr.GetState() {
			case agentv1.TaskState_TASK_STATE_RUNNING:
				started = tr.GetTime().AsTime()
			case agentv1.TaskState_TASK_STATE_FINISHED:
				ended = tr.GetTime().AsTime()
			}
		}
		killAll(ctx, a, []string{id})
		waitBacklog(tb, metrics)
		if ship {
			agentCPU += cpuSeconds(a.Pid())
			motoCPU += cpuSeconds(moto.Proc.Cmd.Process.Pid)
		}
		return float64(logShipBytes) / (1 << 20) / ended.Sub(started).Seconds()
	}
	run("warm", false)
	var with, without []float64
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			without = append(without, run(fmt.Sprintf("plain-%d", i), false))
			with = append(with, run(fmt.Sprintf("ship-%d", i), true))
		} else {
			with = append(with, run(fmt.Sprintf("ship-%d", i), true))
			without = append(without, run(fmt.Sprintf("plain-%d", i), false))
		}
	}
	shipped := scrapeMetric(metrics, "titus_logship_shipped_bytes_total")
	sent := scrapeMetric(metrics, "titus_logship_uploaded_bytes_total") // -1: an agent without compression
	med := func(v []float64) float64 {
		s := append([]float64(nil), v...)
		for i := range s {
			for j := i + 1; j < len(s); j++ {
				if s[j] < s[i] {
					s[i], s[j] = s[j], s[i]
				}
			}
		}
		return s[len(s)/2]
	}
	fmt.Printf("\n== logship: task log throughput while shipping to S3 (moto on this host) vs opted out, %d each, %d MiB per task\n", n, logShipBytes>>20)
	fmt.Printf("%-44s %10.1f MiB/s\n", "without shipping (median)", med(without))
	fmt.Printf("%-44s %10.1f MiB/s\n", "while shipping (median)", med(with))
	fmt.Printf("%-44s %10.1f MiB\n", "shipped in all", shipped/(1<<20))
	if sent >= 0 {
		fmt.Printf("%-44s %10.1f MiB   (%.1fx smaller; real text logs shrink 5-10x)\n", "sent to S3 (logship.compression)", sent/(1<<20), shipped/max(sent, 1))
	}
	fmt.Printf("%-44s %10.1f s\n", "agent CPU while shipping (all rounds)", agentCPU)
	fmt.Printf("%-44s %10.1f s\n", "moto (S3 stand-in) CPU while shipping", motoCPU)
	r := med(with) / med(without)
	verdict := "met"
	if r < 0.9 {
		verdict = "MISSED"
	}
	fmt.Printf("%-44s %10.2fx   (target >= 0.90x: %s)\n", "ratio with / without shipping", r, verdict)
}

// cpuSeconds is a process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) / 100 // USER_HZ
}

// waitBacklog waits until the shipper has nothing left to upload.
func waitBacklog(tb *testenv.Standalone, addr string) {
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if scrapeMetric(addr, "titus_logship_backlog_files") == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	tb.Fatalf("log shipping backlog not drained")
}

func scrapeMetric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, name+" "); ok {
			v, _ := strconv.ParseFloat(strings.TrimSpace(rest), 64)
			return v
		}
	}
	return -1
}
