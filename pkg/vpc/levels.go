package vpc

import "context"

// PoolLevel is how many addresses a pool has free, used and cooling down.
type PoolLevel struct {
	Subnet              string
	Free, Used, Cooling int
}

// Levels reports the address pools' levels (metrics, health).
func (n *Network) Levels(ctx context.Context) ([]PoolLevel, error) { return n.p.Levels(ctx) }

// Levels is the local pool as one level.
func (p *LocalProvider) Levels(ctx context.Context) ([]PoolLevel, error) {
	st, err := p.Status(ctx)
	if err != nil {
		return nil, err
	}
	ls := st.(LocalStatus)
	return []PoolLevel{{Subnet: "local", Free: ls.Free, Used: ls.Used, Cooling: ls.Cooling}}, nil
}

// Levels sums the ENIs' addresses per subnet, plus the room the instance
// still has to grow ("unallocated").
func (p *EC2Provider) Levels(ctx context.Context) ([]PoolLevel, error) {
	st := p.PoolStatus(ctx)
	byPool := map[string]int{}
	var out []PoolLevel
	for _, e := range st.ENIs {
		i, ok := byPool[e.SubnetID]
		if !ok {
			i = len(out)
			out = append(out, PoolLevel{Subnet: e.SubnetID})
			byPool[e.SubnetID] = i
		}
		l := &out[i]
		l.Free += e.Free
		l.Used += e.Used
		l.Cooling += e.Cooling
	}
	// Room to grow: addresses the instance could still take from EC2.
	used := 0
	for _, l := range out {
		used += l.Free + l.Used + l.Cooling
	}
	if room := st.Limits.TaskIPs() - used; room > 0 {
		out = append(out, PoolLevel{Subnet: "unallocated", Free: room})
	}
	return out, nil
}

// FreeAddresses is how many more tasks could get an address now.
func (n *Network) FreeAddresses(ctx context.Context) (int, error) {
	ls, err := n.Levels(ctx)
	free := 0
	for _, l := range ls {
		free += l.Free
	}
	return free, err
}
