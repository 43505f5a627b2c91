package schedload

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/titus-agent/titus-agent/pkg/scheduler"
)

// recordSize is about what the scheduler writes per placed task.
const recordSize = 160

// EtcdBaseline measures the raw write rate of an embedded etcd in dir: n
// records of a task's size, created in transactions of txnOps (each
// guarded by a compare, as the scheduler's fenced writes are), eight in
// flight. It is the ceiling placement's durable commit works under.
func EtcdBaseline(ctx context.Context, dir string, n, txnOps int) (float64, error) {
	e, err := scheduler.StartEmbeddedEtcd(ctx, dir)
	if err != nil {
		return 0, err
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 10 * time.Second, MaxCallSendMsgSize: 8 << 20, Logger: zap.NewNop()})
	if err != nil {
		return 0, fmt.Errorf("etcd client: %w", err)
	}
	defer cli.Close()
	val := strings.Repeat("x", recordSize)
	chunk := txnOps - 1
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(8)
	for i := 0; i < n; i += chunk {
		lo, hi := i, min(i+chunk, n)
		g.Go(func() error {
			cmps := []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision("/baseline/fence"), "=", 0)}
			ops := make([]clientv3.Op, 0, hi-lo)
			for k := lo; k < hi; k++ {
				ops = append(ops, clientv3.OpPut("/baseline/tasks/"+strconv.Itoa(k), val))
			}
			resp, err := cli.Txn(gctx).If(cmps...).Then(ops...).Commit()
			if err != nil {
				return fmt.Errorf("etcd txn: %w", err)
			}
			if !resp.Succeeded {
				return fmt.Errorf("etcd txn refused")
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}
