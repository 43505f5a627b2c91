package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/titus-agent/titus-agent/pkg/agent/taskrunner"
	"github.com/titus-agent/titus-agent/pkg/isolation"
	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
	"github.com/titus-agent/titus-agent/pkg/metrics"
	"github.com/titus-agent/titus-agent/pkg/vpc"
)

// wireNetwork adds the network and bandwidth hooks for the configured
// provider; provider "none" runs tasks in the host's network namespace.
func wireNetwork(ctx context.Context, cfg Config, log *slog.Logger, w *wiring, first, second *[]taskrunner.PrestartHook, m *metrics.Agent) (*vpc.Network, error) {
	var provider vpc.IPProvider
	switch cfg.Network.Provider {
	case "none":
		return nil, nil
	case "local":
		lp, err := vpc.NewLocalProvider(ctx, vpc.LocalConfig{
			CIDR:       netip.MustParsePrefix(cfg.Network.Local.CIDR),
			Bridge:     cfg.Network.Local.Bridge,
			RecordPath: filepath.Join(cfg.StateDir, "vpc-local.json"),
			NAT:        true,
		})
		if err != nil {
			return nil, err
		}
		provider = lp
	case "ec2":
		ep, err := newEC2Provider(ctx, cfg, log, m)
		if err != nil {
			return nil, err
		}
		ep.Start()
		w.closers = append(w.closers, ep.Close)
		provider = ep
	}
	isolate, err := wireFirewall(ctx, cfg.Network, log)
	if err != nil {
		return nil, err
	}
	dp, err := vpc.NewDataPlane(vpc.DataPlaneConfig{
		NetNSDir:     cfg.Network.NetNSDir,
		HostNetNS:    cfg.Network.HostNetNS,
		FilesDir:     filepath.Join(cfg.StateDir, "netfiles"),
		Bridge:       cfg.Network.Local.Bridge,
		IsolatePorts: isolate,
		DNS:          cfg.Network.DNS,
	})
	if err != nil {
		return nil, err
	}
	w.closers = append(w.closers, func() error { dp.Close(); return nil })
	pool, err := wireNamespacePool(cfg.Network, log, w, dp, m)
	if err != nil {
		return nil, err
	}
	n := vpc.NewNetwork(provider, dp)
	*first = append(*first, &taskrunner.NetworkHook{Network: n})
	*second = append(*second, &taskrunner.BandwidthHook{Shaper: isolation.NewBandwidthIn(cfg.Network.HostNetNS)})
	w.reconcilers = append(w.reconcilers, n)
	w.vpc, w.network = n, n
	if cfg.Metadata.Enabled {
		md, err := wireMetadata(ctx, cfg, log, w, first, second, m)
		if err != nil {
			return nil, fmt.Errorf("metadata: %w", err)
		}
		if pool != nil {
			// Pooled namespaces get their metadata listeners too.
			pool.SetPrepare(md.Prepare, md.Release)
		}
	}
	if pool != nil {
		pool.Start(ctx)
	}
	return n, nil
}

// wireNamespacePool keeps network.namespacePool namespaces ready for
// launches. Whatever an earlier agent process's pool left is removed
// first, the pool on or off; the pool is emptied when the agent stops.
func wireNamespacePool(nc NetworkConfig, log *slog.Logger, w *wiring, dp *vpc.DataPlane, m *metrics.Agent) (*vpc.NetNSPool, error) {
	log = log.With("component", "netns-pool")
	if nc.NamespacePool == 0 {
		left, err := dp.PurgePool(nc.NamespacePoolDir())
		if len(left) > 0 {
			log.Warn("removed pooled namespaces an earlier agent process left", "removed", left)
		}
		if err != nil {
			log.Error("remove what an earlier agent process's namespace pool left", "err", err)
		}
		return nil, nil
	}
	pc := vpc.NetNSPoolConfig{Size: nc.NamespacePool, Dir: nc.NamespacePoolDir(), Log: log, Launches: w.launches}
	if m != nil {
		pc.Stats = m
	}
	pool, err := dp.EnablePool(pc)
	if err != nil {
		return nil, fmt.Errorf("namespace pool: %w", err)
	}
	w.closers = append(w.closers, pool.Close)
	log.Info("network namespace pool", "size", nc.NamespacePool, "dir", nc.NamespacePoolDir())
	return pool, nil
}

// wireMetadata answers 169.254.169.254 inside every task's netns.
func wireMetadata(ctx context.Context, cfg Config, log *slog.Logger, w *wiring, first, second *[]taskrunner.PrestartHook, m *metrics.Agent) (*metadataproxy.Service, error) {
	mc := cfg.Metadata
	dur, err := optionalDuration(mc.CredentialDuration)
	if err != nil {
		return nil, fmt.Errorf("metadata.credentialDuration: %w", err)
	}
	// A task whose network attachment has no zone (local provider) is in
	// this host's zone, the one the scheduler places by.
	svc, err := metadataproxy.New(ctx, metadataproxy.Config{
		UpstreamIMDS:       mc.Upstream,
		UpstreamAllowlist:  mc.Allowlist,
		RequireV2:          mc.RequireV2,
		KeyPath:            filepath.Join(cfg.StateDir, "metadata-key.pem"),
		STSEndpoint:        mc.STSEndpoint,
		Region:             mc.Region,
		AccessKeyID:        mc.AccessKeyID,
		SecretKey:          mc.SecretAccessKey,
		AccountID:          mc.AccountID,
		CredentialDuration: dur,
		Logger:             log,
		Metrics:            m,
		AvailabilityZone:   cfg.Scheduler.Zone,
		HostInstanceID:     cfg.Scheduler.InstanceID,
	})
	if err != nil {
		return nil, err
	}
	hook := &taskrunner.MetadataHook{Server: svc}
	// STS's round trip overlaps the network and disk set-up.
	*first = append(*first, &taskrunner.CredentialsHook{Prefetcher: svc})
	*second = append(*second, hook)
	w.restore = append(w.restore, hook)
	w.closers = append(w.closers, svc.Close)
	w.metadata = svc
	return svc, nil
}

func newEC2Provider(ctx context.Context, cfg Config, log *slog.Logger, m *metrics.Agent) (*vpc.EC2Provider, error) {
	e := cfg.Network.EC2
	var host vpc.HostInfo
	if e.InstanceID == "" {
		if cfg.Metadata.Upstream == "" {
			return nil, fmt.Errorf("network.provider ec2 needs metadata.upstream (the host's IMDS) or network.ec2.instanceID")
		}
		var err error
		if host, err = vpc.DiscoverHost(ctx, cfg.Metadata.Upstream); err != nil {
			return nil, fmt.Errorf("discover host: %w", err)
		}
	}
	api, err := vpc.NewEC2Client(ctx, vpc.EC2Config{Region: firstNonEmpty(e.Region, host.Region), Endpoint: e.Endpoint,
		AccessKeyID: e.AccessKeyID, SecretAccessKey: e.SecretAccessKey, APIOptions: m.AWSAPIOptions()})
	if err != nil {
		return nil, err
	}
	if e.InstanceID != "" {
		if host, err = vpc.HostFromEC2(ctx, api, e.InstanceID); err != nil {
			return nil, fmt.Errorf("host from EC2: %w", err)
		}
	}
	releaseAfter, err := optionalDuration(e.PoolReleaseAfter)
	if err != nil {
		return nil, fmt.Errorf("network.ec2.poolReleaseAfter: %w", err)
	}
	cooldown, err := optionalDuration(e.ReuseCooldown)
	if err != nil {
		return nil, fmt.Errorf("network.ec2.reuseCooldown: %w", err)
	}
	hostname, _ := os.Hostname()
	return vpc.NewEC2Provider(ctx, vpc.EC2ProviderConfig{
		API:                   api,
		Host:                  host,
		AgentID:               hostname,
		DefaultSubnetID:       e.DefaultSubnet,
		DefaultSecurityGroups: e.DefaultSecurityGroups,
		Pool:                  vpc.PoolConfig{WarmIPs: e.WarmIPs, MinDefaultIPs: e.MinWarmIPs, ReleaseAfter: releaseAfter, ReuseCooldown: cooldown},
		RecordPath:            filepath.Join(cfg.StateDir, "vpc-ec2.json"),
		Logger:                log,
	})
}

func firstNonEmpty(s ...string) string {
	for _, v := range s {
		if v != "" {
			return v
		}
	}
	return ""
}

func optionalDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	return time.ParseDuration(s)
}
