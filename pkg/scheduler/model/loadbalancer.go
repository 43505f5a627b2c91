package model

import "time"

// MaxTargetGroups is the most target groups one service job may name.
const MaxTargetGroups = 5

// TargetGroup is one ELBv2 target group (target type ip) a service job's
// tasks join at their VPC IP and Port.
type TargetGroup struct {
	ARN  string
	Port uint32
}

// TargetState is where a task stands in one target group.
type TargetState string

// Target states, in the order a task goes through them.
const (
	// TargetPending: not yet Running and healthy, or not yet registered.
	TargetPending TargetState = "pending"
	// TargetRegistered: RegisterTargets succeeded.
	TargetRegistered TargetState = "registered"
	// TargetDraining: deregistered, waiting out the group's deregistration delay.
	TargetDraining TargetState = "draining"
	// TargetDeregistered: out of the group.
	TargetDeregistered TargetState = "deregistered"
)

// TargetRegistration is one task's place in one target group.
type TargetRegistration struct {
	ARN          string
	Port         uint32
	State        TargetState
	Error        string
	Registered   time.Time
	Deregistered time.Time
	// LBHealth is the load balancer's view of the registered target
	// (DescribeTargetHealth: initial, healthy, unhealthy, ...) with its
	// reason code and description; empty until read.
	LBHealth       string
	LBHealthReason string
}

// LBHealthy is ELBv2's state of a target that passes its health checks.
const LBHealthy = "healthy"
