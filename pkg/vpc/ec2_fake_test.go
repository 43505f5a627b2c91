package vpc

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"
)

// fakeEC2 is an in-memory EC2 for one instance. It records every call by
// action name and can fail the next calls of an action.
type fakeEC2 struct {
	mu       sync.Mutex
	calls    []string
	fail     map[string]error // action → error for every call
	instance string
	itype    string
	limits   Limits
	subnets  map[string]types.Subnet
	enis     map[string]*types.NetworkInterface
	nextID   int
	nextIP   map[string]int // subnet → last octet handed out
	// onCall, if set, runs at every call (under the fake's lock).
	onCall func(action string)
}

func newFakeEC2() *fakeEC2 {
	f := &fakeEC2{
		fail: map[string]error{}, instance: "i-0001", itype: "t3.small",
		limits:  Limits{MaxENIs: 3, IPv4PerENI: 4},
		subnets: map[string]types.Subnet{}, enis: map[string]*types.NetworkInterface{}, nextIP: map[string]int{},
	}
	f.subnets["subnet-a"] = types.Subnet{SubnetId: aws.String("subnet-a"), CidrBlock: aws.String("198.18.1.0/24"), AvailabilityZone: aws.String("us-east-1a"), VpcId: aws.String("vpc-1")}
	f.subnets["subnet-b"] = types.Subnet{SubnetId: aws.String("subnet-b"), CidrBlock: aws.String("198.18.2.0/24"), AvailabilityZone: aws.String("us-east-1a"), VpcId: aws.String("vpc-1")}
	f.subnets["subnet-6"] = types.Subnet{SubnetId: aws.String("subnet-6"), CidrBlock: aws.String("198.18.6.0/24"), AvailabilityZone: aws.String("us-east-1a"), VpcId: aws.String("vpc-1"),
		Ipv6CidrBlockAssociationSet: []types.SubnetIpv6CidrBlockAssociation{{Ipv6CidrBlock: aws.String("2001:2:0:6::/64"), Ipv6CidrBlockState: &types.SubnetCidrBlockState{State: types.SubnetCidrBlockStateCodeAssociated}}}}
	f.subnets["subnet-z"] = types.Subnet{SubnetId: aws.String("subnet-z"), CidrBlock: aws.String("198.18.9.0/24"), AvailabilityZone: aws.String("us-east-1b"), VpcId: aws.String("vpc-1")}
	// The primary ENI.
	n := f.newENI("subnet-a", []string{"sg-default"}, nil)
	n.Attachment = &types.NetworkInterfaceAttachment{AttachmentId: aws.String("att-primary"), DeviceIndex: aws.Int32(0), InstanceId: aws.String(f.instance), Status: types.AttachmentStatusAttached}
	return f
}

func (f *fakeEC2) host() HostInfo {
	return HostInfo{InstanceID: f.instance, InstanceType: f.itype, AvailabilityZone: "us-east-1a", Region: "us-east-1", SubnetID: "subnet-a", VPCID: "vpc-1", PrimaryENI: "eni-1"}
}

func (f *fakeEC2) record(action string) error {
	f.calls = append(f.calls, action)
	if f.onCall != nil {
		f.onCall(action)
	}
	return f.fail[action]
}

func (f *fakeEC2) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeEC2) resetCalls() {
	f.mu.Lock()
	f.calls = nil
	f.mu.Unlock()
}

func (f *fakeEC2) ip(subnet string) string {
	f.nextIP[subnet]++
	c := aws.ToString(f.subnets[subnet].CidrBlock)
	var a, b, cc int
	fmt.Sscanf(c, "%d.%d.%d.", &a, &b, &cc)
	return fmt.Sprintf("%d.%d.%d.%d", a, b, cc, 3+f.nextIP[subnet])
}

func (f *fakeEC2) ip6(subnet string) string {
	f.nextIP[subnet+"/6"]++
	return fmt.Sprintf("2001:2:0:6::%x", 0x100+f.nextIP[subnet+"/6"])
}

func (f *fakeEC2) newENI(subnet string, groups []string, tags []types.Tag) *types.NetworkInterface {
	f.nextID++
	id := fmt.Sprintf("eni-%d", f.nextID)
	n := &types.NetworkInterface{
		NetworkInterfaceId: aws.String(id), SubnetId: aws.String(subnet), VpcId: aws.String("vpc-1"),
		MacAddress: aws.String(fmt.Sprintf("02:00:00:00:00:%02x", f.nextID)), TagSet: tags, Status: types.NetworkInterfaceStatusAvailable,
	}
	for _, g := range groups {
		n.Groups = append(n.Groups, types.GroupIdentifier{GroupId: aws.String(g)})
	}
	ip := f.ip(subnet)
	n.PrivateIpAddress = aws.String(ip)
	n.PrivateIpAddresses = []types.NetworkInterfacePrivateIpAddress{{PrivateIpAddress: aws.String(ip), Primary: aws.Bool(true)}}
	f.enis[id] = n
	return n
}

func notFound(what string) error {
	return &smithy.GenericAPIError{Code: "InvalidNetworkInterfaceID.NotFound", Message: what}
}

func (f *fakeEC2) DescribeInstances(_ context.Context, in *ec2.DescribeInstancesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DescribeInstances"); err != nil {
		return nil, err
	}
	return &ec2.DescribeInstancesOutput{Reservations: []types.Reservation{{Instances: []types.Instance{{
		InstanceId: aws.String(f.instance), InstanceType: types.InstanceType(f.itype), SubnetId: aws.String("subnet-a"), VpcId: aws.String("vpc-1"),
		Placement: &types.Placement{AvailabilityZone: aws.String("us-east-1a")},
	}}}}}, nil
}

func (f *fakeEC2) DescribeInstanceTypes(_ context.Context, in *ec2.DescribeInstanceTypesInput, _ ...func(*ec2.Options)) (*ec2.DescribeInstanceTypesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DescribeInstanceTypes"); err != nil {
		return nil, err
	}
	return &ec2.DescribeInstanceTypesOutput{InstanceTypes: []types.InstanceTypeInfo{{
		InstanceType: in.InstanceTypes[0],
		NetworkInfo:  &types.NetworkInfo{MaximumNetworkInterfaces: aws.Int32(int32(f.limits.MaxENIs)), Ipv4AddressesPerInterface: aws.Int32(int32(f.limits.IPv4PerENI))},
	}}}, nil
}

func (f *fakeEC2) DescribeSubnets(_ context.Context, in *ec2.DescribeSubnetsInput, _ ...func(*ec2.Options)) (*ec2.DescribeSubnetsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DescribeSubnets"); err != nil {
		return nil, err
	}
	out := &ec2.DescribeSubnetsOutput{}
	for _, id := range in.SubnetIds {
		if s, ok := f.subnets[id]; ok {
			out.Subnets = append(out.Subnets, s)
		}
	}
	return out, nil
}

func (f *fakeEC2) DescribeNetworkInterfaces(_ context.Context, in *ec2.DescribeNetworkInterfacesInput, _ ...func(*ec2.Options)) (*ec2.DescribeNetworkInterfacesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DescribeNetworkInterfaces"); err != nil {
		return nil, err
	}
	out := &ec2.DescribeNetworkInterfacesOutput{}
	for _, n := range f.enis {
		ok := true
		for _, flt := range in.Filters {
			want := flt.Values[0]
			switch name := aws.ToString(flt.Name); name {
			case "attachment.instance-id":
				ok = ok && n.Attachment != nil && aws.ToString(n.Attachment.InstanceId) == want
			case "tag:" + TagInstanceID:
				has := false
				for _, t := range n.TagSet {
					has = has || (aws.ToString(t.Key) == TagInstanceID && aws.ToString(t.Value) == want)
				}
				ok = ok && has
			default:
				return nil, fmt.Errorf("fake: unknown filter %s", name)
			}
		}
		if ok {
			out.NetworkInterfaces = append(out.NetworkInterfaces, *n)
		}
	}
	return out, nil
}

func (f *fakeEC2) CreateNetworkInterface(_ context.Context, in *ec2.CreateNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.CreateNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("CreateNetworkInterface"); err != nil {
		return nil, err
	}
	var tags []types.Tag
	for _, ts := range in.TagSpecifications {
		tags = append(tags, ts.Tags...)
	}
	n := f.newENI(aws.ToString(in.SubnetId), in.Groups, tags)
	for range aws.ToInt32(in.SecondaryPrivateIpAddressCount) {
		n.PrivateIpAddresses = append(n.PrivateIpAddresses, types.NetworkInterfacePrivateIpAddress{PrivateIpAddress: aws.String(f.ip(aws.ToString(in.SubnetId))), Primary: aws.Bool(false)})
	}
	for range aws.ToInt32(in.Ipv6AddressCount) {
		n.Ipv6Addresses = append(n.Ipv6Addresses, types.NetworkInterfaceIpv6Address{Ipv6Address: aws.String(f.ip6(aws.ToString(in.SubnetId)))})
	}
	c := *n
	return &ec2.CreateNetworkInterfaceOutput{NetworkInterface: &c}, nil
}

func (f *fakeEC2) AttachNetworkInterface(_ context.Context, in *ec2.AttachNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.AttachNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AttachNetworkInterface"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	for _, o := range f.enis {
		if o.Attachment != nil && aws.ToInt32(o.Attachment.DeviceIndex) == aws.ToInt32(in.DeviceIndex) {
			return nil, &smithy.GenericAPIError{Code: "InvalidParameterValue", Message: "device index in use"}
		}
	}
	att := "att-" + aws.ToString(n.NetworkInterfaceId)
	n.Attachment = &types.NetworkInterfaceAttachment{AttachmentId: aws.String(att), DeviceIndex: in.DeviceIndex, InstanceId: in.InstanceId, Status: types.AttachmentStatusAttached}
	n.Status = types.NetworkInterfaceStatusInUse
	return &ec2.AttachNetworkInterfaceOutput{AttachmentId: aws.String(att)}, nil
}

func (f *fakeEC2) DetachNetworkInterface(_ context.Context, in *ec2.DetachNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.DetachNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DetachNetworkInterface"); err != nil {
		return nil, err
	}
	for _, n := range f.enis {
		if n.Attachment != nil && aws.ToString(n.Attachment.AttachmentId) == aws.ToString(in.AttachmentId) {
			n.Attachment = nil
			n.Status = types.NetworkInterfaceStatusAvailable
			return &ec2.DetachNetworkInterfaceOutput{}, nil
		}
	}
	return nil, &smithy.GenericAPIError{Code: "InvalidAttachmentID.NotFound"}
}

func (f *fakeEC2) DeleteNetworkInterface(_ context.Context, in *ec2.DeleteNetworkInterfaceInput, _ ...func(*ec2.Options)) (*ec2.DeleteNetworkInterfaceOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("DeleteNetworkInterface"); err != nil {
		return nil, err
	}
	id := aws.ToString(in.NetworkInterfaceId)
	n, ok := f.enis[id]
	if !ok {
		return nil, notFound(id)
	}
	if n.Attachment != nil {
		return nil, &smithy.GenericAPIError{Code: "InvalidNetworkInterface.InUse"}
	}
	delete(f.enis, id)
	return &ec2.DeleteNetworkInterfaceOutput{}, nil
}

func (f *fakeEC2) ModifyNetworkInterfaceAttribute(_ context.Context, in *ec2.ModifyNetworkInterfaceAttributeInput, _ ...func(*ec2.Options)) (*ec2.ModifyNetworkInterfaceAttributeOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("ModifyNetworkInterfaceAttribute"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	if in.Groups != nil {
		n.Groups = nil
		for _, g := range in.Groups {
			n.Groups = append(n.Groups, types.GroupIdentifier{GroupId: aws.String(g)})
		}
	}
	if in.Attachment != nil && n.Attachment != nil {
		n.Attachment.DeleteOnTermination = in.Attachment.DeleteOnTermination
	}
	return &ec2.ModifyNetworkInterfaceAttributeOutput{}, nil
}

func (f *fakeEC2) AssignPrivateIpAddresses(_ context.Context, in *ec2.AssignPrivateIpAddressesInput, _ ...func(*ec2.Options)) (*ec2.AssignPrivateIpAddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AssignPrivateIpAddresses"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	count := int(aws.ToInt32(in.SecondaryPrivateIpAddressCount))
	if len(n.PrivateIpAddresses)+count > f.limits.IPv4PerENI {
		return nil, &smithy.GenericAPIError{Code: "PrivateIpAddressLimitExceeded"}
	}
	out := &ec2.AssignPrivateIpAddressesOutput{NetworkInterfaceId: n.NetworkInterfaceId}
	for range count {
		ip := f.ip(aws.ToString(n.SubnetId))
		n.PrivateIpAddresses = append(n.PrivateIpAddresses, types.NetworkInterfacePrivateIpAddress{PrivateIpAddress: aws.String(ip), Primary: aws.Bool(false)})
		out.AssignedPrivateIpAddresses = append(out.AssignedPrivateIpAddresses, types.AssignedPrivateIpAddress{PrivateIpAddress: aws.String(ip)})
	}
	return out, nil
}

func (f *fakeEC2) UnassignPrivateIpAddresses(_ context.Context, in *ec2.UnassignPrivateIpAddressesInput, _ ...func(*ec2.Options)) (*ec2.UnassignPrivateIpAddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UnassignPrivateIpAddresses"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	drop := map[string]bool{}
	for _, ip := range in.PrivateIpAddresses {
		drop[ip] = true
	}
	var keep []types.NetworkInterfacePrivateIpAddress
	for _, a := range n.PrivateIpAddresses {
		if !drop[aws.ToString(a.PrivateIpAddress)] || aws.ToBool(a.Primary) {
			keep = append(keep, a)
		}
	}
	n.PrivateIpAddresses = keep
	return &ec2.UnassignPrivateIpAddressesOutput{}, nil
}

func (f *fakeEC2) AssignIpv6Addresses(_ context.Context, in *ec2.AssignIpv6AddressesInput, _ ...func(*ec2.Options)) (*ec2.AssignIpv6AddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("AssignIpv6Addresses"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	out := &ec2.AssignIpv6AddressesOutput{NetworkInterfaceId: n.NetworkInterfaceId}
	for range aws.ToInt32(in.Ipv6AddressCount) {
		ip := f.ip6(aws.ToString(n.SubnetId))
		n.Ipv6Addresses = append(n.Ipv6Addresses, types.NetworkInterfaceIpv6Address{Ipv6Address: aws.String(ip)})
		out.AssignedIpv6Addresses = append(out.AssignedIpv6Addresses, ip)
	}
	return out, nil
}

func (f *fakeEC2) UnassignIpv6Addresses(_ context.Context, in *ec2.UnassignIpv6AddressesInput, _ ...func(*ec2.Options)) (*ec2.UnassignIpv6AddressesOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.record("UnassignIpv6Addresses"); err != nil {
		return nil, err
	}
	n, ok := f.enis[aws.ToString(in.NetworkInterfaceId)]
	if !ok {
		return nil, notFound(aws.ToString(in.NetworkInterfaceId))
	}
	n.Ipv6Addresses = slices.DeleteFunc(n.Ipv6Addresses, func(a types.NetworkInterfaceIpv6Address) bool {
		return slices.Contains(in.Ipv6Addresses, aws.ToString(a.Ipv6Address))
	})
	return &ec2.UnassignIpv6AddressesOutput{}, nil
}

// ipv6Of returns an ENI's IPv6 addresses, sorted.
func (f *fakeEC2) ipv6Of(id string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	if n, ok := f.enis[id]; ok {
		for _, a := range n.Ipv6Addresses {
			out = append(out, aws.ToString(a.Ipv6Address))
		}
	}
	sortIPs(out)
	return out
}

// view returns, per task ENI of the instance, its sorted secondary IPs and groups.
func (f *fakeEC2) view() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for id, n := range f.enis {
		if n.Attachment != nil && aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
			continue
		}
		e := stateFromEC2(*n)
		var ips []string
		for ip := range e.IPs {
			ips = append(ips, ip)
		}
		sortIPs(ips)
		att := "detached"
		if n.Attachment != nil {
			att = fmt.Sprintf("dev%d", aws.ToInt32(n.Attachment.DeviceIndex))
		}
		out[id] = fmt.Sprintf("%s %s %v", att, e.Key, ips)
	}
	return out
}
