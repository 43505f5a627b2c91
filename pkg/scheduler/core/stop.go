package core

// stopTask is the one place a task is stopped voluntarily: a rollout
// replacing it, a drain moving it, a scale-in retiring it, a user's kill.
// Involuntary ends (a lost host, a crash) do not come here. A task that
// may be in a load balancer's target group leaves it first: the kill is
// held back (killWanted is set at once, so every rule sees it going)
// until the target loop has deregistered it and waited out the group's
// deregistration delay, bounded by Config.MaxDeregistrationWait.
// Idempotent. Callers hold c.mu.
func (c *Core) stopTask(t *taskState) {
	if t.lb.stopping {
		return
	}
	if !mayBeInTargets(t) {
		c.killTask(t)
		return
	}
	t.killWanted = true
	t.lb.stopping, t.lb.stopAt = true, c.clock()
	c.kickTargets()
}
