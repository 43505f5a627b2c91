package vpc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
)

// HostInfo is what the ec2 provider knows about the instance it runs on.
type HostInfo struct {
	InstanceID       string `json:"instanceId"`
	InstanceType     string `json:"instanceType"`
	AvailabilityZone string `json:"availabilityZone"`
	Region           string `json:"region,omitempty"`
	PrimaryENI       string `json:"primaryEni"`
	PrimaryMAC       string `json:"primaryMac"`
	SubnetID         string `json:"subnetId"`
	VPCID            string `json:"vpcId"`
	AMIID            string `json:"amiId,omitempty"`
}

// DiscoverHost reads the host's identity from its instance metadata service
// at endpoint. The endpoint is always explicit: the agent never guesses
// 169.254.169.254 on its own.
func DiscoverHost(ctx context.Context, endpoint string) (HostInfo, error) {
	if endpoint == "" {
		return HostInfo{}, errors.New("discover host: no IMDS endpoint configured")
	}
	c := imds.New(imds.Options{Endpoint: endpoint})
	get := func(p string) (string, error) {
		out, err := c.GetMetadata(ctx, &imds.GetMetadataInput{Path: p})
		if err != nil {
			return "", fmt.Errorf("imds %s: %w", p, err)
		}
		defer out.Content.Close()
		b, err := io.ReadAll(out.Content)
		return strings.TrimSpace(string(b)), err
	}
	var h HostInfo
	var err error
	for _, f := range []struct {
		dst  *string
		path string
	}{
		{&h.InstanceID, "instance-id"},
		{&h.InstanceType, "instance-type"},
		{&h.AvailabilityZone, "placement/availability-zone"},
		{&h.PrimaryMAC, "mac"},
	} {
		if *f.dst, err = get(f.path); err != nil {
			return HostInfo{}, err
		}
	}
	base := "network/interfaces/macs/" + h.PrimaryMAC + "/"
	for _, f := range []struct {
		dst  *string
		path string
	}{
		{&h.PrimaryENI, base + "interface-id"},
		{&h.SubnetID, base + "subnet-id"},
		{&h.VPCID, base + "vpc-id"},
	} {
		if *f.dst, err = get(f.path); err != nil {
			return HostInfo{}, err
		}
	}
	h.AMIID, _ = get("ami-id") // optional: only a placement attribute
	if h.Region, err = get("placement/region"); err != nil {
		h.Region = strings.TrimRight(h.AvailabilityZone, "abcdefghijklmnopqrstuvwxyz")
	}
	return h, nil
}

// HostFromEC2 describes instanceID and fills type, AZ, primary ENI, subnet
// and VPC from EC2. It lets tests run against an instance that exists in
// the EC2 endpoint (moto) even when the IMDS in use is a fixed mock.
func HostFromEC2(ctx context.Context, api EC2API, instanceID string) (HostInfo, error) {
	out, err := api.DescribeInstances(ctx, &ec2.DescribeInstancesInput{InstanceIds: []string{instanceID}})
	if err != nil {
		return HostInfo{}, fmt.Errorf("describe instance %s: %w", instanceID, err)
	}
	for _, r := range out.Reservations {
		for _, in := range r.Instances {
			h := HostInfo{
				InstanceID:   aws.ToString(in.InstanceId),
				InstanceType: string(in.InstanceType),
				SubnetID:     aws.ToString(in.SubnetId),
				VPCID:        aws.ToString(in.VpcId),
				AMIID:        aws.ToString(in.ImageId),
			}
			if in.Placement != nil {
				h.AvailabilityZone = aws.ToString(in.Placement.AvailabilityZone)
				h.Region = strings.TrimRight(h.AvailabilityZone, "abcdefghijklmnopqrstuvwxyz")
			}
			for _, n := range in.NetworkInterfaces {
				if n.Attachment != nil && aws.ToInt32(n.Attachment.DeviceIndex) == 0 {
					h.PrimaryENI = aws.ToString(n.NetworkInterfaceId)
					h.PrimaryMAC = aws.ToString(n.MacAddress)
				}
			}
			return h, nil
		}
	}
	return HostInfo{}, fmt.Errorf("describe instance %s: not found", instanceID)
}

// Limits are an instance type's ENI and per-ENI IPv4 limits.
type Limits struct {
	MaxENIs    int `json:"maxEnis"`
	IPv4PerENI int `json:"ipv4PerEni"`
}

// TaskIPs is how many task addresses the type can hold: every ENI but the
// primary, each less its own primary address.
func (l Limits) TaskIPs() int {
	if l.MaxENIs < 2 || l.IPv4PerENI < 2 {
		return 0
	}
	return (l.MaxENIs - 1) * (l.IPv4PerENI - 1)
}

// limitsCache remembers DescribeInstanceTypes answers; types do not change.
type limitsCache struct {
	mu sync.Mutex
	m  map[string]Limits
}

func (c *limitsCache) get(ctx context.Context, api EC2API, instanceType string) (Limits, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.m[instanceType]; ok {
		return l, nil
	}
	out, err := api.DescribeInstanceTypes(ctx, &ec2.DescribeInstanceTypesInput{
		InstanceTypes: []types.InstanceType{types.InstanceType(instanceType)},
	})
	if err != nil {
		return Limits{}, fmt.Errorf("describe instance type %s: %w", instanceType, err)
	}
	if len(out.InstanceTypes) == 0 || out.InstanceTypes[0].NetworkInfo == nil {
		return Limits{}, fmt.Errorf("describe instance type %s: no network info", instanceType)
	}
	ni := out.InstanceTypes[0].NetworkInfo
	l := Limits{MaxENIs: int(aws.ToInt32(ni.MaximumNetworkInterfaces)), IPv4PerENI: int(aws.ToInt32(ni.Ipv4AddressesPerInterface))}
	if c.m == nil {
		c.m = map[string]Limits{}
	}
	c.m[instanceType] = l
	return l, nil
}
