package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/titus-agent/titus-agent/test/schedload"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("scheduler", 60, func(tb *testenv.Standalone, f benchFlags) { benchScheduler(tb, f.profile) })
}

// benchScheduler runs the real scheduler (embedded etcd, gRPC on loopback)
// with 5,000 simulated agents in 3 AZs speaking the real agent stream and
// submits 100,000 tasks. The baseline is the same etcd's raw write rate for
// records of a task's size, measured first in the same run. With -profile,
// each placement phase's CPU, mutex and block profiles go to that directory.
func benchScheduler(tb *testenv.Standalone, profile string) {
	ctx := context.Background()
	rep, err := schedload.Run(ctx, schedload.Options{
		Agents: 5000, AZs: 3, Tasks: 100_000,
		AgentTTL: 10 * time.Second, HeartbeatInterval: time.Second,
		Timeout: 5 * time.Minute, DataDir: tb.TempDir(),
		Log:         slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		Constrained: true, ProfileDir: profile,
	})
	rep.Print(os.Stdout)
	if err != nil {
		fmt.Printf("scheduler: FAILED: %v\n", err)
	}
}
