// Package vpc gives every task its own network namespace and VPC address.
//
// An IPProvider hands out addresses — LocalProvider from a CIDR behind a host
// bridge with NAT (laptops, CI, the demo), EC2Provider from secondary IPs of
// ENIs with warm pools (production). DataPlane wires an address into a task's
// netns with netlink: veth pair, addresses, routes, policy rules; with a
// NetNSPool it takes namespaces and veths made ahead of the launch. Network
// joins the two and is what the agent's network hook calls.
package vpc
