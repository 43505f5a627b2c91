package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/titus-agent/titus-agent/pkg/vpc"
	"github.com/titus-agent/titus-agent/test/testenv"
)

// leaks lists what a drained fleet still holds, by kind (each must be
// empty): containers, shims, task netns, task links and rules on the
// hosts, mounts and loop devices under the agents' directories, task
// cgroups, EC2 IPs/ENIs beyond the warm pool, and etcd keys of ended
// jobs past their retention.
func (f *fleet) leaks(jobIDs []string) map[string][]string {
	out := map[string][]string{}
	add := func(kind, what string) { out[kind] = append(out[kind], what) }
	procs, _ := os.ReadDir("/proc")
	mountinfo, _ := os.ReadFile("/proc/self/mountinfo")
	loops, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, h := range f.hosts {
		dir := h.agent.Dir
		ctr, _ := exec.Command(filepath.Join(testenv.CacheBin(), "ctr"), "-a", h.ctd.Address, "-n", namespace, "containers", "ls", "-q").Output()
		for _, c := range strings.Fields(string(ctr)) {
			add("containers", h.sim.InstanceID+"/"+c)
		}
		for _, p := range procs {
			b, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
			if err == nil && strings.Contains(string(b), "containerd-shim") && strings.Contains(string(b), h.ctd.Address) {
				add("shims", h.sim.InstanceID+" pid "+p.Name())
			}
		}
		if ents, err := os.ReadDir(filepath.Join(dir, "netns")); err == nil {
			for _, e := range ents {
				add("netns", h.sim.InstanceID+"/"+e.Name())
			}
		}
		if hh, err := netlink.NewHandleAt(h.sim.NS); err == nil {
			links, _ := hh.LinkList()
			for _, l := range links {
				if strings.HasPrefix(l.Attrs().Name, "vt") {
					add("links", h.sim.InstanceID+"/"+l.Attrs().Name)
				}
			}
			rules, _ := hh.RuleList(netlink.FAMILY_V4)
			for _, r := range rules {
				if r.Priority == 1000 {
					add("links", fmt.Sprintf("%s rule from %v", h.sim.InstanceID, r.Src))
				}
			}
			hh.Close()
		}
		for _, d := range []string{dir, h.state} {
			for _, line := range strings.Split(string(mountinfo), "\n") {
				if fs := strings.Fields(line); len(fs) > 4 && strings.HasPrefix(fs[4], d+"/") {
					add("mounts", fs[4])
				}
			}
			for _, l := range loops {
				if b, err := os.ReadFile(l); err == nil && strings.HasPrefix(strings.TrimSpace(string(b)), d+"/") {
					add("loop devices", strings.TrimSpace(string(b)))
				}
			}
		}
		resp, err := f.hv.EC2.DescribeNetworkInterfaces(context.Background(), &ec2.DescribeNetworkInterfacesInput{
			Filters: []types.Filter{{Name: aws.String("tag:" + vpc.TagInstanceID), Values: []string{h.sim.InstanceID}}},
		})
		if err != nil {
			add("moto", "describe: "+err.Error())
		} else {
			ips := 0
			for _, n := range resp.NetworkInterfaces {
				for _, a := range n.PrivateIpAddresses {
					if !aws.ToBool(a.Primary) {
						ips++
					}
				}
			}
			// The drained host keeps its warm pool: one ENI, at most warmIPs (2) free IPs.
			if len(resp.NetworkInterfaces) > 1 || ips > 2 {
				add("moto", fmt.Sprintf("%s: %d task ENIs with %d secondary IPs (warm pool: 1 ENI, <= 2 IPs)", h.sim.InstanceID, len(resp.NetworkInterfaces), ips))
			}
		}
	}
	for _, ctl := range []string{"memory", "pids", "cpu,cpuacct", "unified"} {
		if ents, err := os.ReadDir(filepath.Join("/sys/fs/cgroup", ctl, namespace)); err == nil {
			for _, e := range ents {
				if e.IsDir() {
					add("cgroups", ctl+"/"+namespace+"/"+e.Name())
				}
			}
		}
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: f.endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		add("etcd keys", "dial: "+err.Error())
		return out
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, id := range jobIDs {
		for _, p := range []string{etcdPrefix + "jobs/" + id, etcdPrefix + "tasks/" + id + "/"} {
			r, err := cli.Get(ctx, p, clientv3.WithPrefix(), clientv3.WithKeysOnly())
			if err != nil {
				add("etcd keys", "get: "+err.Error())
				return out
			}
			for _, kv := range r.Kvs {
				add("etcd keys", string(kv.Key))
			}
		}
	}
	return out
}
