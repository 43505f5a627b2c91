// Package chaos is the soak under faults: it starts a small fleet —
// three titus-scheduler replicas over a three-member etcd cluster (real
// etcd processes), agents on simulated EC2 hosts (the ec2 provider over
// moto behind a fault proxy, the AWS IMDS mock, STS behind its own fault
// proxy) across AZs, each agent with its own containerd — keeps it busy
// with a steady mix of batch and service jobs driven through the
// titus-scheduler CLI, and injects faults from a seeded schedule: agents
// and containerd killed and restarted, the scheduler leader killed, etcd
// members killed and restarted, a host cut off from the schedulers and
// healed, EC2 throttled, STS down. At the end it drains the fleet, checks
// for leaks, prints an SLO report from what the run itself observed and
// fails if an objective of docs/slo.md is missed.
//
// The seed is printed; -chaos.seed replays a run's schedule. `make
// chaos` runs the long form; `make test` a short one (TestChaosSoak with
// its defaults), under /tmp/titus-integ.lock like the integration suite.
package chaos
