package vpc

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

// poolView is the pool's ENIs as "key" and ip → "task|v6|cooling" strings.
type poolView map[string]struct {
	Key string
	IPs map[string]string
}

func viewOf(p *pool) poolView {
	out := poolView{}
	for id, e := range p.enis {
		v := out[id]
		v.Key, v.IPs = e.Key.String(), map[string]string{}
		for ip, s := range e.IPs {
			c := ""
			if !s.CoolUntil.IsZero() {
				c = "cooling"
			}
			v.IPs[ip] = s.TaskID + "|" + s.IPv6 + "|" + c
		}
		out[id] = v
	}
	return out
}

func withV6(e *eniState, pairs map[string]string) *eniState {
	for ip, v6 := range pairs {
		e.IPs[ip].IPv6 = v6
	}
	return e
}

func TestPoolEdits(t *testing.T) {
	base := func() []*eniState {
		return []*eniState{
			withV6(eni("eni-1", 1, keyA, map[string]string{"198.18.0.10": "t1", "198.18.0.11": "", "198.18.0.12": "~"}), map[string]string{"198.18.0.11": "2001:db8::11"}),
			eni("eni-2", 2, keyA2, map[string]string{"198.18.0.20": ""}),
		}
	}
	type view = map[string]string
	for _, tc := range []struct {
		name string
		edit func(p *pool) any // its return values
		want any
		// changed ENIs in the pool after the edit (nil = removed); the
		// others must be as before.
		changed map[string]*struct {
			Key string
			IPs view
		}
	}{
		{
			name: "addENI drops addresses another ENI holds",
			edit: func(p *pool) any {
				e := withV6(eni("eni-3", 3, keyB, map[string]string{"198.18.0.11": "", "198.18.0.30": ""}), map[string]string{"198.18.0.11": "2001:db8::99"})
				d, d6 := p.addENI(e)
				return [][]string{d, d6}
			},
			want: [][]string{{"198.18.0.11"}, {"2001:db8::99"}},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-3": {keyB.String(), view{"198.18.0.30": "||"}}},
		},
		{
			name: "addIPs pairs IPv6 and skips held addresses",
			edit: func(p *pool) any {
				d, d6 := p.addIPs("eni-2", []string{"198.18.0.21", "198.18.0.10"}, []string{"2001:db8::21", "2001:db8::10"})
				return [][]string{d, d6}
			},
			want: [][]string{{"198.18.0.10"}, {"2001:db8::10"}},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-2": {keyA2.String(), view{"198.18.0.20": "||", "198.18.0.21": "|2001:db8::21|"}}},
		},
		{
			name: "addIPs to a gone ENI takes nothing",
			edit: func(p *pool) any {
				d, d6 := p.addIPs("eni-9", []string{"198.18.0.90"}, nil)
				return [][]string{d, d6}
			},
			want: [][]string{nil, nil},
		},
		{
			name: "regroupIdle moves an idle ENI",
			edit: func(p *pool) any {
				old, ok := p.regroupIdle("eni-2", keyB)
				return []any{old.String(), ok}
			},
			want: []any{keyA2.String(), true},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-2": {keyB.String(), view{"198.18.0.20": "||"}}},
		},
		{
			name: "regroupIdle leaves a used ENI",
			edit: func(p *pool) any {
				_, ok := p.regroupIdle("eni-1", keyB)
				return ok
			},
			want: false,
		},
		{
			name: "regroup undone",
			edit: func(p *pool) any {
				old, _ := p.regroupIdle("eni-2", keyB)
				p.setKey("eni-2", old)
				p.setKey("eni-9", keyB) // gone: no-op
				return nil
			},
		},
		{
			name: "removeIdle takes an idle ENI out",
			edit: func(p *pool) any {
				e, ok := p.removeIdle("eni-2")
				return []any{e.ID, ok}
			},
			want: []any{"eni-2", true},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-2": nil},
		},
		{
			name: "removeIdle leaves a used ENI",
			edit: func(p *pool) any {
				_, ok := p.removeIdle("eni-1")
				return ok
			},
			want: false,
		},
		{
			name: "remove undone",
			edit: func(p *pool) any {
				e, _ := p.removeIdle("eni-2")
				p.putENI(e)
				return nil
			},
		},
		{
			name: "removeFreeIPs skips used and unknown addresses",
			edit: func(p *pool) any {
				ips, v6, slots := p.removeFreeIPs("eni-1", []string{"198.18.0.10", "198.18.0.11", "198.18.0.12", "198.18.0.99"})
				return []any{ips, v6, len(slots)}
			},
			want: []any{[]string{"198.18.0.11", "198.18.0.12"}, []string{"2001:db8::11"}, 2},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-1": {keyA.String(), view{"198.18.0.10": "t1||"}}},
		},
		{
			name: "removeFreeIPs undone: back as free, cooled down, pairs kept",
			edit: func(p *pool) any {
				_, _, slots := p.removeFreeIPs("eni-1", []string{"198.18.0.11", "198.18.0.12"})
				p.restoreIPs("eni-1", slots)
				p.restoreIPs("eni-9", slots) // gone: no-op
				return nil
			},
			changed: map[string]*struct {
				Key string
				IPs view
			}{"eni-1": {keyA.String(), view{"198.18.0.10": "t1||", "198.18.0.11": "|2001:db8::11|", "198.18.0.12": "||"}}},
		},
		{
			name: "untake frees at once",
			edit: func(p *pool) any {
				t, ok := p.take(keyA2, "t2", t0, false)
				p.untake("t2")
				p.untake("t-unknown")
				_, held := p.tasks["t2"]
				return []any{t.IP, ok, held}
			},
			want: []any{"198.18.0.20", true, false},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := testPool(base()...)
			want := viewOf(p)
			for id, c := range tc.changed {
				if c == nil {
					delete(want, id)
					continue
				}
				want[id] = struct {
					Key string
					IPs map[string]string
				}{c.Key, c.IPs}
			}
			got := tc.edit(p)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("result (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(want, viewOf(p)); diff != "" {
				t.Errorf("pool (-want +got):\n%s", diff)
			}
		})
	}
}

// TestSnapshotIsACopy: the snapshot an EC2 call works on carries the
// addresses and pairs but no task state, and editing it leaves the pool alone.
func TestSnapshotIsACopy(t *testing.T) {
	p := testPool(withV6(eni("eni-1", 1, keyA, map[string]string{"198.18.0.10": "t1", "198.18.0.11": ""}), map[string]string{"198.18.0.11": "2001:db8::11"}))
	p.enis["eni-1"].PrimaryIP = "198.18.0.5"
	before := viewOf(p)
	snap, ok := p.snapshot("eni-1")
	if !ok {
		t.Fatal("no snapshot")
	}
	got := viewOf(&pool{enis: map[string]*eniState{"eni-1": snap}})
	want := poolView{"eni-1": {Key: PoolKey{}.String(), IPs: map[string]string{"198.18.0.10": "||", "198.18.0.11": "|2001:db8::11|"}}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("snapshot (-want +got):\n%s", diff)
	}
	if snap.PrimaryIP != "198.18.0.5" {
		t.Errorf("snapshot primary = %q", snap.PrimaryIP)
	}
	snap.IPs["198.18.0.12"] = &ipSlot{}
	delete(snap.IPs, "198.18.0.10")
	if diff := cmp.Diff(before, viewOf(p)); diff != "" {
		t.Errorf("pool changed through the snapshot (-want +got):\n%s", diff)
	}
	if _, ok := p.snapshot("eni-9"); ok {
		t.Error("snapshot of a gone ENI")
	}
}
