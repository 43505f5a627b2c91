package vpc

import (
	"errors"
	"net/netip"
)

// TEMPORARY until allocation.go lands.
type Allocation struct {
	TaskID           string
	IPv4             netip.Prefix
	Gateway          netip.Addr
	MAC              string
	ENIID            string
	DeviceIndex      int
	SubnetID         string
	VPCID            string
	SecurityGroupIDs []string
	AvailabilityZone string
	Region           string
}

var ErrNoCapacity = errors.New("no capacity")
