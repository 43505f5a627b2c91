package task

// NetworkAttachment is a task's network: its netns and its VPC address,
// as set up by pkg/vpc and served by pkg/metadataproxy.
type NetworkAttachment struct {
	NetNSPath        string   `json:"netnsPath"`
	IPv4             string   `json:"ipv4"`
	IPv6             string   `json:"ipv6,omitempty"`
	MAC              string   `json:"mac,omitempty"`
	Gateway          string   `json:"gateway,omitempty"`
	ENIID            string   `json:"eniId,omitempty"`
	DeviceIndex      int      `json:"deviceIndex,omitempty"`
	SubnetID         string   `json:"subnetId,omitempty"`
	VPCID            string   `json:"vpcId,omitempty"`
	SecurityGroupIDs []string `json:"securityGroupIds,omitempty"`
	AvailabilityZone string   `json:"availabilityZone,omitempty"`
	Region           string   `json:"region,omitempty"`
	// Files to bind-mount into the container, e.g. /etc/resolv.conf.
	ResolvConfPath string `json:"resolvConfPath,omitempty"`
	HostsPath      string `json:"hostsPath,omitempty"`
	HostnamePath   string `json:"hostnamePath,omitempty"`
}
