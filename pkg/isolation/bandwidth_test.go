package isolation

import (
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink"
)

// fakeTC records qdisc changes.
type fakeTC struct {
	calls   []string
	pairErr error
}

func (f *fakeTC) VethPair(nsPath, hostNS string) (string, string, error) {
	f.calls = append(f.calls, "pair "+nsPath+" host="+hostNS)
	if f.pairErr != nil {
		return "", "", f.pairErr
	}
	return "vethhost", "eth0", nil
}

func (f *fakeTC) SetTBF(nsPath, ifName string, t TBF) error {
	f.calls = append(f.calls, fmt.Sprintf("tbf ns=%q dev=%s rate=%d burst=%d limit=%d", nsPath, ifName, t.Rate, t.Burst, t.Limit))
	return nil
}

func (f *fakeTC) ClearRoot(nsPath, ifName string) error {
	f.calls = append(f.calls, fmt.Sprintf("clear ns=%q dev=%s", nsPath, ifName))
	return nil
}

func TestTBFFor(t *testing.T) {
	for mbps, want := range map[int64]TBF{
		1:     {Rate: 125_000, Burst: 32 << 10, Limit: 32<<10 + 12_500},
		100:   {Rate: 12_500_000, Burst: 125_000, Limit: 1_375_000},
		10000: {Rate: 1_250_000_000, Burst: 12_500_000, Limit: 137_500_000},
	} {
		if diff := cmp.Diff(want, TBFFor(mbps)); diff != "" {
			t.Errorf("TBFFor(%d) (-want +got):\n%s", mbps, diff)
		}
	}
}

// TestTBFQdiscBucket: the bucket the kernel gets holds Burst bytes at
// every rate, so a full-size frame always fits (at low rates the bucket
// once arrived as a few hundred bytes: nothing got through).
func TestTBFQdiscBucket(t *testing.T) {
	const frame = 1514
	for _, mbps := range []int64{1, 2, 5, 40, 100, 10000} {
		want := TBFFor(mbps)
		q := tbfQdisc(7, want)
		if q.Rate != want.Rate || q.Limit != want.Limit || q.LinkIndex != 7 || q.Parent != netlink.HANDLE_ROOT || q.Handle != tbfHandle {
			t.Errorf("%d Mbps: qdisc %+v, want rate %d, limit %d on link 7 as our root", mbps, q, want.Rate, want.Limit)
		}
		got := netlink.Xmitsize(q.Rate, q.Buffer) // what the kernel's bucket holds
		if got < frame || math.Abs(float64(got)-float64(want.Burst)) > float64(want.Burst)/100 {
			t.Errorf("%d Mbps: the kernel's bucket holds %d bytes, want %d (and at least a %d-byte frame)", mbps, got, want.Burst, frame)
		}
	}
}

func TestBandwidth(t *testing.T) {
	ns := filepath.Join(t.TempDir(), "ns")
	if err := os.WriteFile(ns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(t.TempDir(), "gone")
	tbf := fmt.Sprintf("rate=%d burst=%d limit=%d", 6_250_000, 62_500, 687_500)
	for _, tc := range []struct {
		name    string
		hostNS  string // where the veths' host ends are ("" = ours)
		run     func(*Bandwidth) error
		pairErr error
		want    []string
		wantErr bool
	}{
		{
			name: "limit finds the host veth",
			run:  func(b *Bandwidth) error { return b.Limit(context.Background(), ns, "", 50) },
			want: []string{"pair " + ns + " host=", `tbf ns="" dev=vethhost ` + tbf, fmt.Sprintf("tbf ns=%q dev=eth0 ", ns) + tbf},
		},
		{
			name: "limit with a known host veth",
			run:  func(b *Bandwidth) error { return b.Limit(context.Background(), ns, "vh-123", 50) },
			want: []string{"pair " + ns + " host=", `tbf ns="" dev=vh-123 ` + tbf, fmt.Sprintf("tbf ns=%q dev=eth0 ", ns) + tbf},
		},
		{
			name:   "limit on a host whose veths are in another netns",
			hostNS: "/run/netns/host1",
			run:    func(b *Bandwidth) error { return b.Limit(context.Background(), ns, "", 50) },
			want:   []string{"pair " + ns + " host=/run/netns/host1", `tbf ns="/run/netns/host1" dev=vethhost ` + tbf, fmt.Sprintf("tbf ns=%q dev=eth0 ", ns) + tbf},
		},
		{
			name:   "clear on that host",
			hostNS: "/run/netns/host1",
			run:    func(b *Bandwidth) error { return b.Clear(context.Background(), ns, "") },
			want:   []string{"pair " + ns + " host=/run/netns/host1", `clear ns="/run/netns/host1" dev=vethhost`, fmt.Sprintf("clear ns=%q dev=eth0", ns)},
		},
		{
			name:   "clear on that host after the netns is gone",
			hostNS: "/run/netns/host1",
			run:    func(b *Bandwidth) error { return b.Clear(context.Background(), gone, "vh-1") },
			want:   []string{`clear ns="/run/netns/host1" dev=vh-1`},
		},
		{
			name: "no limit asked, nothing touched",
			run:  func(b *Bandwidth) error { return b.Limit(context.Background(), ns, "", 0) },
		},
		{
			name:    "no veth",
			run:     func(b *Bandwidth) error { return b.Limit(context.Background(), ns, "", 10) },
			pairErr: ErrNoVeth,
			want:    []string{"pair " + ns + " host="},
			wantErr: true,
		},
		{
			name: "clear",
			run:  func(b *Bandwidth) error { return b.Clear(context.Background(), ns, "") },
			want: []string{"pair " + ns + " host=", `clear ns="" dev=vethhost`, fmt.Sprintf("clear ns=%q dev=eth0", ns)},
		},
		{
			name: "clear after the netns is gone",
			run:  func(b *Bandwidth) error { return b.Clear(context.Background(), gone, "") },
		},
		{
			name: "clear after the netns is gone, host veth known",
			run:  func(b *Bandwidth) error { return b.Clear(context.Background(), gone, "vh-1") },
			want: []string{`clear ns="" dev=vh-1`},
		},
		{
			name:    "clear when the veth is already gone",
			run:     func(b *Bandwidth) error { return b.Clear(context.Background(), ns, "") },
			pairErr: fmt.Errorf("x: %w", ErrNoVeth),
			want:    []string{"pair " + ns + " host="},
		},
		{
			name:    "clear with a netlink error",
			run:     func(b *Bandwidth) error { return b.Clear(context.Background(), ns, "") },
			pairErr: errors.New("netlink broke"),
			want:    []string{"pair " + ns + " host="},
			wantErr: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeTC{pairErr: tc.pairErr}
			err := tc.run(&Bandwidth{tc: f, hostNS: tc.hostNS})
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, f.calls, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
		})
	}
}
