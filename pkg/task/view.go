package task

// View is a task as the agent knows it: what was asked and where it is.
type View struct {
	Spec    Spec               `json:"spec"`
	Status  Status             `json:"status"`
	Network *NetworkAttachment `json:"network,omitempty"`
}

// Event is one state transition (or health change) of one task, as
// broadcast to watchers.
type Event struct {
	TaskID string `json:"taskId"`
	Status Status `json:"status"`
	// HealthChanged: the event is a change of Status.Health, not a transition.
	HealthChanged bool `json:"healthChanged,omitempty"`
	// IPv4 is the task's VPC address once it has one (the scheduler puts
	// it in load balancers).
	IPv4 string `json:"ipv4,omitempty"`
}
