package core

// stopTask is the one place a task is stopped voluntarily: a rollout
// replacing it, a drain moving it, a scale-in retiring it, a user's kill.
// Involuntary ends (a lost host, a crash) do not come here. Whatever must
// happen before a voluntary stop (leaving a load balancer and waiting out
// its deregistration delay) belongs here. Callers hold c.mu.
func (c *Core) stopTask(t *taskState) {
	c.killTask(t)
}
