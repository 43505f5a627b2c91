package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// EmbeddedEtcd is a single-member etcd inside this process, serving on
// loopback. Its ports are chosen once and kept in the data directory, so a
// restart over the same directory comes back on the same endpoints.
type EmbeddedEtcd struct {
	etcd      *embed.Etcd
	Endpoints []string
}

type etcdPorts struct {
	Client int `json:"client"`
	Peer   int `json:"peer"`
}

// StartEmbeddedEtcd starts (or restarts) the embedded etcd in dir.
func StartEmbeddedEtcd(ctx context.Context, dir string) (*EmbeddedEtcd, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("etcd dir: %w", err)
	}
	ports, err := loadPorts(filepath.Join(dir, "ports.json"))
	if err != nil {
		return nil, err
	}
	cfg := embed.NewConfig()
	cfg.Name = "titus-scheduler"
	cfg.Dir = filepath.Join(dir, "member-data")
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(nopZap())
	cfg.MaxTxnOps = 1024
	cfg.MaxRequestBytes = 8 << 20
	cfg.QuotaBackendBytes = 8 << 30
	cfg.AutoCompactionMode = embed.CompactorModeRevision
	cfg.AutoCompactionRetention = "100000"
	// etcd formats the whole request of every apply slower than this into
	// its warning, eagerly, whatever the log level: on a busy host a
	// placement batch's 1,000-put transaction takes longer than the default
	// 100ms, and formatting it made every apply slower until requests timed
	// out. (Run an external etcd with a large --warning-apply-duration too.)
	cfg.WarningApplyDuration = time.Minute
	curl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports.Client)}
	purl := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", ports.Peer)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{curl}, []url.URL{curl}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{purl}, []url.URL{purl}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("embedded etcd did not become ready within 60s")
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	}
	return &EmbeddedEtcd{etcd: e, Endpoints: []string{curl.String()}}, nil
}

// Close stops the embedded etcd.
func (e *EmbeddedEtcd) Close() { e.etcd.Close() }

func loadPorts(path string) (etcdPorts, error) {
	var p etcdPorts
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &p); err != nil {
			return p, fmt.Errorf("%s: %w", path, err)
		}
		return p, nil
	}
	var err error
	if p.Client, err = freePort(); err != nil {
		return p, err
	}
	if p.Peer, err = freePort(); err != nil {
		return p, err
	}
	b, _ := json.Marshal(p)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return p, fmt.Errorf("save etcd ports: %w", err)
	}
	return p, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
