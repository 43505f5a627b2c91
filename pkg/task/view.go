package task

// View is a task as the agent knows it: what was asked and where it is.
type View struct {
	Spec    Spec               `json:"spec"`
	Status  Status             `json:"status"`
	Network *NetworkAttachment `json:"network,omitempty"`
}

// Event is one state transition of one task, as broadcast to watchers.
type Event struct {
	TaskID string `json:"taskId"`
	Status Status `json:"status"`
}
