package vpc

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/titus-agent/titus-agent/pkg/backoff"
)

// Tags put on every ENI the agent creates, so a restarted agent (or an
// operator) can tell which ENIs are ours and which instance made them.
const (
	TagInstanceID = "titus-agent:instance-id"
	TagManaged    = "titus-agent:managed"
	TagAgent      = "titus-agent:agent"
)

// subnetInfo is what the data plane needs to route out of an ENI.
type subnetInfo struct {
	ID      string
	CIDR    netip.Prefix
	Gateway netip.Addr
	// IPv6 is the subnet's IPv6 CIDR; invalid when it has none.
	IPv6  netip.Prefix
	AZ    string
	VPCID string
}

// eniManager makes the EC2 calls for ENIs and their addresses. It keeps no
// pool state; the provider does.
type eniManager struct {
	api     EC2API
	host    HostInfo
	agentID string

	mu      sync.Mutex
	subnets map[string]subnetInfo
}

func (m *eniManager) tags() []types.Tag {
	return []types.Tag{
		{Key: aws.String(TagInstanceID), Value: aws.String(m.host.InstanceID)},
		{Key: aws.String(TagManaged), Value: aws.String("true")},
		{Key: aws.String(TagAgent), Value: aws.String(m.agentID)},
	}
}

// subnets describes (once, then cached) the given subnets.
func (m *eniManager) subnet(ctx context.Context, id string) (subnetInfo, error) {
	infos, err := m.describeSubnets(ctx, []string{id})
	if err != nil {
		return subnetInfo{}, err
	}
	return infos[id], nil
}

func (m *eniManager) describeSubnets(ctx context.Context, ids []string) (map[string]subnetInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.subnets == nil {
		m.subnets = map[string]subnetInfo{}
	}
	var missing []string
	for _, id := range ids {
		if _, ok := m.subnets[id]; !ok {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		out, err := m.api.DescribeSubnets(ctx, &ec2.DescribeSubnetsInput{SubnetIds: missing})
		if err != nil {
			return nil, fmt.Errorf("describe subnets %v: %w", missing, err)
		}
		for _, s := range out.Subnets {
			p, err := netip.ParsePrefix(aws.ToString(s.CidrBlock))
			if err != nil {
				return nil, fmt.Errorf("subnet %s: bad CIDR %q: %w", aws.ToString(s.SubnetId), aws.ToString(s.CidrBlock), err)
			}
			info := subnetInfo{
				ID: aws.ToString(s.SubnetId), CIDR: p.Masked(), Gateway: p.Masked().Addr().Next(),
				AZ: aws.ToString(s.AvailabilityZone), VPCID: aws.ToString(s.VpcId),
			}
			for _, a := range s.Ipv6CidrBlockAssociationSet {
				if st := a.Ipv6CidrBlockState; st != nil {
					switch st.State {
					case types.SubnetCidrBlockStateCodeDisassociating, types.SubnetCidrBlockStateCodeDisassociated,
						types.SubnetCidrBlockStateCodeFailing, types.SubnetCidrBlockStateCodeFailed:
						continue // (moto sends no usable state: absent counts as associated)
					}
				}
				if p6, err := netip.ParsePrefix(aws.ToString(a.Ipv6CidrBlock)); err == nil && p6.Addr().Is6() {
					info.IPv6 = p6.Masked()
					break
				}
			}
			m.subnets[aws.ToString(s.SubnetId)] = info
		}
	}
	res := map[string]subnetInfo{}
	for _, id := range ids {
		s, ok := m.subnets[id]
		if !ok {
			return nil, fmt.Errorf("subnet %s: %w", id, ErrUnknownSubnet)
		}
		res[id] = s
	}
	return res, nil
}

func (m *eniManager) cachedSubnet(id string) (subnetInfo, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.subnets[id]
	return s, ok
}

// ErrUnknownSubnet is returned for a subnet EC2 does not know.
var ErrUnknownSubnet = errors.New("unknown subnet")

// attachedENIs lists every ENI attached to this instance (ours or not).
func (m *eniManager) attachedENIs(ctx context.Context) ([]types.NetworkInterface, error) {
	return m.describe(ctx, types.Filter{Name: aws.String("attachment.instance-id"), Values: []string{m.host.InstanceID}})
}

// ourENIs lists every ENI tagged as created by the agent on this instance,
// attached or not.
func (m *eniManager) ourENIs(ctx context.Context) ([]types.NetworkInterface, error) {
	return m.describe(ctx, types.Filter{Name: aws.String("tag:" + TagInstanceID), Values: []string{m.host.InstanceID}})
}

func (m *eniManager) describe(ctx context.Context, f types.Filter) ([]types.NetworkInterface, error) {
	var out []types.NetworkInterface
	p := ec2.NewDescribeNetworkInterfacesPaginator(m.api, &ec2.DescribeNetworkInterfacesInput{Filters: []types.Filter{f}})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("describe network interfaces: %w", err)
		}
		out = append(out, page.NetworkInterfaces...)
	}
	return out, nil
}

// stateFromEC2 turns a described ENI into pool state.
func stateFromEC2(n types.NetworkInterface) *eniState {
	e := &eniState{
		ID:       aws.ToString(n.NetworkInterfaceId),
		MAC:      aws.ToString(n.MacAddress),
		SubnetID: aws.ToString(n.SubnetId),
		IPs:      map[string]*ipSlot{},
	}
	if n.Attachment != nil {
		e.AttachmentID = aws.ToString(n.Attachment.AttachmentId)
		e.DeviceIndex = int(aws.ToInt32(n.Attachment.DeviceIndex))
	}
	var groups []string
	for _, g := range n.Groups {
		groups = append(groups, aws.ToString(g.GroupId))
	}
	e.Key = NewPoolKey(e.SubnetID, groups)
	for _, a := range n.PrivateIpAddresses {
		if aws.ToBool(a.Primary) {
			e.PrimaryIP = aws.ToString(a.PrivateIpAddress)
			continue
		}
		e.IPs[aws.ToString(a.PrivateIpAddress)] = &ipSlot{}
	}
	if e.PrimaryIP == "" {
		e.PrimaryIP = aws.ToString(n.PrivateIpAddress)
		delete(e.IPs, e.PrimaryIP)
	}
	var v6 []string
	for _, a := range n.Ipv6Addresses {
		if ip := aws.ToString(a.Ipv6Address); ip != "" {
			v6 = append(v6, ip)
		}
	}
	e.pairIPv6(v6)
	return e
}

// freeDeviceIndex picks the lowest device index above 0 not taken on the instance.
func freeDeviceIndex(attached []types.NetworkInterface, maxENIs int) (int, bool) {
	taken := map[int]bool{0: true}
	for _, n := range attached {
		if n.Attachment != nil {
			taken[int(aws.ToInt32(n.Attachment.DeviceIndex))] = true
		}
	}
	for i := 1; i < maxENIs; i++ {
		if !taken[i] {
			return i, true
		}
	}
	return 0, false
}

// create makes an ENI in key's subnet with key's SGs and count secondary
// IPs, attaches it at a free device index and sets delete-on-termination.
// A failure after creation deletes the ENI again.
func (m *eniManager) create(ctx context.Context, key PoolKey, count int, maxENIs int, ipv6 bool) (*eniState, error) {
	attached, err := m.attachedENIs(ctx)
	if err != nil {
		return nil, err
	}
	idx, ok := freeDeviceIndex(attached, maxENIs)
	if !ok {
		return nil, fmt.Errorf("create ENI: no free device index: %w", ErrNoCapacity)
	}
	in := &ec2.CreateNetworkInterfaceInput{
		SubnetId:    aws.String(key.SubnetID),
		Groups:      key.GroupIDs(),
		Description: aws.String("titus-agent task ENI for " + m.host.InstanceID),
		TagSpecifications: []types.TagSpecification{{
			ResourceType: types.ResourceTypeNetworkInterface, Tags: m.tags(),
		}},
	}
	if count > 0 {
		in.SecondaryPrivateIpAddressCount = aws.Int32(int32(count))
		if ipv6 {
			in.Ipv6AddressCount = aws.Int32(int32(count)) // one per secondary IPv4
		}
	}
	out, err := m.api.CreateNetworkInterface(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("create ENI in %s: %w", key.SubnetID, err)
	}
	id := aws.ToString(out.NetworkInterface.NetworkInterfaceId)
	att, err := m.api.AttachNetworkInterface(ctx, &ec2.AttachNetworkInterfaceInput{
		NetworkInterfaceId: aws.String(id), InstanceId: aws.String(m.host.InstanceID), DeviceIndex: aws.Int32(int32(idx)),
	})
	if err != nil {
		_, derr := m.api.DeleteNetworkInterface(context.WithoutCancel(ctx), &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(id)})
		return nil, errors.Join(fmt.Errorf("attach ENI %s at %d: %w", id, idx, err), derr)
	}
	attID := aws.ToString(att.AttachmentId)
	if _, err := m.api.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(id),
		Attachment:         &types.NetworkInterfaceAttachmentChanges{AttachmentId: aws.String(attID), DeleteOnTermination: aws.Bool(true)},
	}); err != nil {
		derr := m.detachDelete(context.WithoutCancel(ctx), id, attID)
		return nil, errors.Join(fmt.Errorf("ENI %s delete-on-termination: %w", id, err), derr)
	}
	e := stateFromEC2(*out.NetworkInterface)
	e.AttachmentID, e.DeviceIndex = attID, idx
	e.Key = key
	return e, nil
}

// assign asks EC2 for count more secondary IPs on eni in one call and
// returns the new ones (moto answers with all of them; AWS with the new).
// With ipv6, as many IPv6 addresses follow in a second call, v6[i] paired
// with ips[i]; if that call fails the new IPv4s are given back.
func (m *eniManager) assign(ctx context.Context, e *eniState, count int, ipv6 bool) (ips, v6 []string, err error) {
	out, err := m.api.AssignPrivateIpAddresses(ctx, &ec2.AssignPrivateIpAddressesInput{
		NetworkInterfaceId: aws.String(e.ID), SecondaryPrivateIpAddressCount: aws.Int32(int32(count)),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("assign %d IPs on %s: %w", count, e.ID, err)
	}
	for _, a := range out.AssignedPrivateIpAddresses {
		ip := aws.ToString(a.PrivateIpAddress)
		if _, known := e.IPs[ip]; known || ip == e.PrimaryIP || ip == "" {
			continue
		}
		ips = append(ips, ip)
	}
	if !ipv6 || len(ips) == 0 {
		return ips, nil, nil
	}
	known := map[string]bool{}
	for _, s := range e.IPs {
		if s != nil && s.IPv6 != "" {
			known[s.IPv6] = true
		}
	}
	out6, err := m.api.AssignIpv6Addresses(ctx, &ec2.AssignIpv6AddressesInput{
		NetworkInterfaceId: aws.String(e.ID), Ipv6AddressCount: aws.Int32(int32(len(ips))),
	})
	if err == nil {
		for _, ip := range out6.AssignedIpv6Addresses {
			if !known[ip] && ip != "" {
				v6 = append(v6, ip)
			}
		}
		if len(v6) < len(ips) {
			err = fmt.Errorf("EC2 assigned %d IPv6 addresses, want %d", len(v6), len(ips))
		}
	}
	if err != nil {
		uerr := m.unassign(context.WithoutCancel(ctx), e.ID, ips, v6)
		return nil, nil, errors.Join(fmt.Errorf("assign %d IPv6 addresses on %s: %w", len(ips), e.ID, err), uerr)
	}
	return ips, v6[:len(ips)], nil
}

// unassign gives IPv4 (and their paired IPv6) addresses back to EC2.
func (m *eniManager) unassign(ctx context.Context, eniID string, ips, v6 []string) error {
	if len(ips) > 0 {
		if _, err := m.api.UnassignPrivateIpAddresses(ctx, &ec2.UnassignPrivateIpAddressesInput{
			NetworkInterfaceId: aws.String(eniID), PrivateIpAddresses: ips,
		}); err != nil {
			return fmt.Errorf("unassign %v from %s: %w", ips, eniID, err)
		}
	}
	if len(v6) > 0 {
		if _, err := m.api.UnassignIpv6Addresses(ctx, &ec2.UnassignIpv6AddressesInput{
			NetworkInterfaceId: aws.String(eniID), Ipv6Addresses: v6,
		}); err != nil {
			return fmt.Errorf("unassign %v from %s: %w", v6, eniID, err)
		}
	}
	return nil
}

// regroup changes an idle ENI's security groups so another key can use it.
func (m *eniManager) regroup(ctx context.Context, eniID string, groups []string) error {
	if _, err := m.api.ModifyNetworkInterfaceAttribute(ctx, &ec2.ModifyNetworkInterfaceAttributeInput{
		NetworkInterfaceId: aws.String(eniID), Groups: groups,
	}); err != nil {
		return fmt.Errorf("set groups of %s to %v: %w", eniID, groups, err)
	}
	return nil
}

// detachDelete detaches (if attached) and deletes an ENI, waiting for the
// detach to finish. A missing ENI counts as deleted.
func (m *eniManager) detachDelete(ctx context.Context, eniID, attachmentID string) error {
	if attachmentID != "" {
		if _, err := m.api.DetachNetworkInterface(ctx, &ec2.DetachNetworkInterfaceInput{
			AttachmentId: aws.String(attachmentID), Force: aws.Bool(true),
		}); err != nil && !isNotFound(err) {
			return fmt.Errorf("detach %s: %w", eniID, err)
		}
	}
	b := backoff.New(detachBackoff)
	for {
		_, err := m.api.DeleteNetworkInterface(ctx, &ec2.DeleteNetworkInterfaceInput{NetworkInterfaceId: aws.String(eniID)})
		if err == nil || isNotFound(err) {
			return nil
		}
		if !isInUse(err) {
			return fmt.Errorf("delete %s: %w", eniID, err)
		}
		if !b.Wait(ctx) {
			return fmt.Errorf("delete %s: %w", eniID, errors.Join(err, ctx.Err()))
		}
	}
}

// detachBackoff paces DeleteNetworkInterface while the detach finishes.
var detachBackoff = backoff.Policy{Base: 50 * time.Millisecond, Max: 2 * time.Second, Jitter: backoff.Equal}

func apiCode(err error) string {
	var ae interface{ ErrorCode() string }
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}

func isNotFound(err error) bool {
	switch apiCode(err) {
	case "InvalidNetworkInterfaceID.NotFound", "InvalidAttachmentID.NotFound", "InvalidNetworkInterfaceId.NotFound":
		return true
	}
	return false
}

func isInUse(err error) bool {
	switch apiCode(err) {
	case "InvalidNetworkInterface.InUse", "IncorrectState":
		return true
	}
	return false
}
