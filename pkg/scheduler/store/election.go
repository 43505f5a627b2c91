package store

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Dial connects to etcd with the scheduler's client settings.
func Dial(endpoints []string) (*clientv3.Client, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 10 * time.Second, MaxCallSendMsgSize: 8 << 20, Logger: nopZap()})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

// Election is one replica's candidacy for leadership under a key prefix.
type Election struct {
	cli    *clientv3.Client
	sess   *concurrency.Session
	el     *concurrency.Election
	prefix string
	txnOps int
}

// NewElection opens an etcd session with the given TTL: a leader whose
// process dies is replaced about that long after.
func NewElection(ctx context.Context, cli *clientv3.Client, prefix string, ttl time.Duration, txnOps int) (*Election, error) {
	sess, err := concurrency.NewSession(cli, concurrency.WithTTL(int(max(ttl/time.Second, 1))), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("etcd session: %w", err)
	}
	return &Election{cli: cli, sess: sess, el: concurrency.NewElection(sess, prefix+"leader"), prefix: prefix, txnOps: txnOps}, nil
}

// Campaign waits until this replica leads, then returns the store whose
// every write is fenced on this term.
func (e *Election) Campaign(ctx context.Context, addr string) (*Store, error) {
	if err := e.el.Campaign(ctx, addr); err != nil {
		return nil, fmt.Errorf("campaign: %w", err)
	}
	return newStore(e.cli, e.prefix, e.txnOps, clientv3.Compare(clientv3.CreateRevision(e.el.Key()), "=", e.el.Rev())), nil
}

// Observe calls fn with the leader's address at every change, until ctx ends.
func (e *Election) Observe(ctx context.Context, fn func(addr string)) {
	for resp := range e.el.Observe(ctx) {
		if len(resp.Kvs) > 0 {
			fn(string(resp.Kvs[0].Value))
		}
	}
}

// Resign hands leadership over at once.
func (e *Election) Resign(ctx context.Context) error { return e.el.Resign(ctx) }

// Done is closed when the session expires (leadership is lost).
func (e *Election) Done() <-chan struct{} { return e.sess.Done() }

// Close ends the session.
func (e *Election) Close() error { return e.sess.Close() }
