package vpc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/titus-agent/titus-agent/pkg/hostcmd"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// LocalConfig configures the no-cloud provider.
type LocalConfig struct {
	// CIDR the tasks' addresses come from; its first address is the bridge's.
	CIDR netip.Prefix
	// Bridge is the host bridge the tasks' veths join.
	Bridge string
	// RecordPath is the JSON file that records allocations.
	RecordPath string
	// ReuseCooldown keeps a released address unused for a while.
	ReuseCooldown time.Duration
	// NAT masquerades the CIDR's traffic leaving the host (nftables).
	NAT bool
	Now func() time.Time
}

// LocalProvider hands out addresses from a CIDR behind a host bridge.
type LocalProvider struct {
	cfg LocalConfig
	nft nftRunner

	mu  sync.Mutex
	rec localRecord
}

type localRecord struct {
	Tasks   map[string]string    `json:"tasks"`   // task id -> address
	Cooling map[string]time.Time `json:"cooling"` // address -> reusable after
}

// nftRunner applies an nftables script (os/exec in production).
type nftRunner interface {
	Run(ctx context.Context, script string) error
}

type execNFT struct{}

func (execNFT) Run(ctx context.Context, script string) error {
	_, err := hostcmd.RunInput(ctx, strings.NewReader(script), "nft", "-f", "-")
	return err
}

// NewLocalProvider loads the record and sets up the bridge and NAT.
func NewLocalProvider(ctx context.Context, cfg LocalConfig) (*LocalProvider, error) {
	if !cfg.CIDR.IsValid() || !cfg.CIDR.Addr().Is4() || cfg.CIDR.Bits() > 30 {
		return nil, fmt.Errorf("vpc: local CIDR %s: need an IPv4 /30 or larger", cfg.CIDR)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReuseCooldown == 0 {
		cfg.ReuseCooldown = 30 * time.Second
	}
	p := &LocalProvider{cfg: cfg, nft: execNFT{}, rec: localRecord{Tasks: map[string]string{}, Cooling: map[string]time.Time{}}}
	if b, err := os.ReadFile(cfg.RecordPath); err == nil {
		if err := json.Unmarshal(b, &p.rec); err != nil {
			return nil, fmt.Errorf("vpc: local record %s: %w", cfg.RecordPath, err)
		}
		if p.rec.Tasks == nil {
			p.rec.Tasks = map[string]string{}
		}
		if p.rec.Cooling == nil {
			p.rec.Cooling = map[string]time.Time{}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("vpc: local record: %w", err)
	}
	if err := p.ensureBridge(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Gateway is the bridge's address.
func (p *LocalProvider) Gateway() netip.Addr { return p.cfg.CIDR.Masked().Addr().Next() }

func (p *LocalProvider) nftTable() string { return NATTable(p.cfg.Bridge) }

// natTablePrefix starts the name of every local provider's NAT table.
const natTablePrefix = "titus_"

// NATTable names the local provider's NAT table (family ip) for a bridge.
func NATTable(bridge string) string {
	return natTablePrefix + strings.ReplaceAll(bridge, "-", "_")
}

func (p *LocalProvider) ensureBridge(ctx context.Context) error {
	br, err := netlink.LinkByName(p.cfg.Bridge)
	if err != nil {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: p.cfg.Bridge}}); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("vpc: create bridge %s: %w", p.cfg.Bridge, err)
		}
		if br, err = netlink.LinkByName(p.cfg.Bridge); err != nil {
			return fmt.Errorf("vpc: bridge %s: %w", p.cfg.Bridge, err)
		}
	}
	addr := &netlink.Addr{IPNet: prefixToIPNet(netip.PrefixFrom(p.Gateway(), p.cfg.CIDR.Bits()))}
	if err := netlink.AddrReplace(br, addr); err != nil {
		return fmt.Errorf("vpc: bridge address: %w", err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("vpc: bridge up: %w", err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		return fmt.Errorf("vpc: ip_forward: %w", err)
	}
	if !p.cfg.NAT {
		return nil
	}
	script := fmt.Sprintf(`table ip %[1]s {}
delete table ip %[1]s
table ip %[1]s {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr %[2]s oifname != "%[3]s" masquerade
  }
  chain forward {
    type filter hook forward priority filter; policy accept;
    iifname "%[3]s" accept
    oifname "%[3]s" ct state established,related accept
  }
}
`, p.nftTable(), p.cfg.CIDR.Masked(), p.cfg.Bridge)
	return p.nft.Run(ctx, script)
}

// Destroy removes the bridge and NAT table (tests, `vpc gc` of a retired
// provider). Tasks must be gone.
func (p *LocalProvider) Destroy(ctx context.Context) error {
	var errs []error
	if p.cfg.NAT {
		if err := p.nft.Run(ctx, fmt.Sprintf("table ip %[1]s {}\ndelete table ip %[1]s\n", p.nftTable())); err != nil {
			errs = append(errs, err)
		}
	}
	if br, err := netlink.LinkByName(p.cfg.Bridge); err == nil {
		if err := netlink.LinkDel(br); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Allocate gives the task the lowest free address not cooling down. The
// choice is recorded before any interface is touched.
func (p *LocalProvider) Allocate(ctx context.Context, taskID string, req task.NetworkRequest) (Allocation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ip, ok := p.rec.Tasks[taskID]; ok {
		return p.allocation(taskID, netip.MustParseAddr(ip)), nil
	}
	used := map[string]bool{}
	for _, ip := range p.rec.Tasks {
		used[ip] = true
	}
	now := p.cfg.Now()
	gw := p.Gateway()
	last := lastAddr(p.cfg.CIDR)
	for ip := gw.Next(); ip.IsValid() && ip.Less(last); ip = ip.Next() {
		s := ip.String()
		if used[s] {
			continue
		}
		if until, ok := p.rec.Cooling[s]; ok && now.Before(until) {
			continue
		}
		delete(p.rec.Cooling, s)
		p.rec.Tasks[taskID] = s
		if err := p.save(); err != nil {
			delete(p.rec.Tasks, taskID)
			return Allocation{}, err
		}
		return p.allocation(taskID, ip), nil
	}
	return Allocation{}, fmt.Errorf("%w: all addresses of %s are in use or cooling down", ErrNoCapacity, p.cfg.CIDR)
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n |= (1 << (32 - p.Bits())) - 1 // broadcast
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func (p *LocalProvider) allocation(taskID string, ip netip.Addr) Allocation {
	return Allocation{TaskID: taskID, Provider: ProviderLocal, IPv4: netip.PrefixFrom(ip, p.cfg.CIDR.Bits()), Gateway: p.Gateway(), SubnetID: "local", VPCID: "local"}
}

// Release frees the task's address after a cool-down.
func (p *LocalProvider) Release(ctx context.Context, taskID string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	ip, ok := p.rec.Tasks[taskID]
	if !ok {
		return nil
	}
	delete(p.rec.Tasks, taskID)
	p.rec.Cooling[ip] = p.cfg.Now().Add(p.cfg.ReuseCooldown)
	return p.save()
}

// Allocations lists what is held.
func (p *LocalProvider) Allocations(ctx context.Context) ([]Allocation, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Allocation, 0, len(p.rec.Tasks))
	for _, id := range slices.Sorted(maps.Keys(p.rec.Tasks)) {
		out = append(out, p.allocation(id, netip.MustParseAddr(p.rec.Tasks[id])))
	}
	return out, nil
}

// LocalStatus is the operator's view of the local provider.
type LocalStatus struct {
	CIDR    string            `json:"cidr"`
	Bridge  string            `json:"bridge"`
	Gateway string            `json:"gateway"`
	Used    int               `json:"used"`
	Free    int               `json:"free"`
	Cooling int               `json:"cooling"`
	Tasks   map[string]string `json:"tasks"`
}

// Name is ProviderLocal.
func (p *LocalProvider) Name() string { return ProviderLocal }

// Status reports usage.
func (p *LocalProvider) Status(ctx context.Context) (any, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cooling := 0
	now := p.cfg.Now()
	for _, t := range p.rec.Cooling {
		if now.Before(t) {
			cooling++
		}
	}
	total := 1<<(32-p.cfg.CIDR.Bits()) - 3 // network, gateway, broadcast
	tasks := maps.Clone(p.rec.Tasks)
	return LocalStatus{CIDR: p.cfg.CIDR.String(), Bridge: p.cfg.Bridge, Gateway: p.Gateway().String(), Used: len(tasks), Cooling: cooling, Free: total - len(tasks) - cooling, Tasks: tasks}, nil
}

func (p *LocalProvider) save() error {
	b, err := json.Marshal(p.rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p.cfg.RecordPath), 0o700); err != nil {
		return fmt.Errorf("vpc: record dir: %w", err)
	}
	tmp := p.cfg.RecordPath + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("vpc: record: %w", err)
	}
	// The write's error must reach the check below: once dropped (a
	// shadowing :=), a full disk truncated the record to nothing and the
	// rename put that over every allocation.
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("vpc: record: %w", err)
	}
	return os.Rename(tmp, p.cfg.RecordPath)
}
