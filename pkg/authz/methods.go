package authz

import schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"

// Action is what an RPC does, as the policy grants it.
type Action string

// Actions.
const (
	JobSubmit    Action = "job.submit"
	JobRead      Action = "job.read"
	JobKill      Action = "job.kill"
	JobScale     Action = "job.scale"
	JobUpdate    Action = "job.update"
	TaskRead     Action = "task.read"
	TaskKill     Action = "task.kill"
	AgentRead    Action = "agent.read"
	AgentDrain   Action = "agent.drain"
	AuditRead    Action = "audit.read"
	AgentConnect Action = "agent.connect"
	// TaskDebug runs commands inside a job's tasks (titus-scheduler task exec).
	TaskDebug Action = "task.debug"
	// TaskLogs reads a job's tasks' stdout and stderr (titus-scheduler task
	// logs): what a task prints may hold what env redaction hides, so it is
	// granted as task.debug is, not with task.read.
	TaskLogs Action = "task.logs"
)

// Rule is how one RPC is authorized and audited.
type Rule struct {
	Action Action
	// Mutating calls are recorded in the audit trail.
	Mutating bool
}

// Methods maps every RPC of titus.scheduler.v1.Scheduler to its rule. An
// RPC not in it is refused (TestEveryRPCHasARule keeps it complete).
var Methods = map[string]Rule{
	schedv1.Scheduler_SubmitJob_FullMethodName:    {JobSubmit, true},
	schedv1.Scheduler_GetJob_FullMethodName:       {JobRead, false},
	schedv1.Scheduler_ListJobs_FullMethodName:     {JobRead, false},
	schedv1.Scheduler_KillJob_FullMethodName:      {JobKill, true},
	schedv1.Scheduler_ScaleJob_FullMethodName:     {JobScale, true},
	schedv1.Scheduler_UpdateJob_FullMethodName:    {JobUpdate, true},
	schedv1.Scheduler_RolloutJob_FullMethodName:   {JobUpdate, true},
	schedv1.Scheduler_ListTasks_FullMethodName:    {TaskRead, false},
	schedv1.Scheduler_GetTask_FullMethodName:      {TaskRead, false},
	schedv1.Scheduler_KillTask_FullMethodName:     {TaskKill, true},
	schedv1.Scheduler_ListAgents_FullMethodName:   {AgentRead, false},
	schedv1.Scheduler_DrainAgent_FullMethodName:   {AgentDrain, true},
	schedv1.Scheduler_UndrainAgent_FullMethodName: {AgentDrain, true},
	schedv1.Scheduler_Connect_FullMethodName:      {AgentConnect, false},
	schedv1.Scheduler_ListAudit_FullMethodName:    {AuditRead, false},
	// Audited by its handler, once the session ends, with its command and exit code.
	schedv1.Scheduler_ExecTask_FullMethodName: {TaskDebug, false},
	// Audited by its handler, once the read ends, with where it read from.
	schedv1.Scheduler_TaskLogs_FullMethodName: {TaskLogs, false},
}

// Role names, as the audit trail and errors show them.
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
	RoleReader   = "reader"
	RoleOwner    = "owner"
)

// global lists what each global role grants on every application.
var global = map[string][]Action{
	RoleAdmin:    {JobSubmit, JobRead, JobKill, JobScale, JobUpdate, TaskRead, TaskKill, TaskDebug, TaskLogs, AgentRead, AgentDrain, AuditRead},
	RoleOperator: {JobRead, TaskRead, TaskDebug, TaskLogs, AgentRead, AgentDrain, AuditRead},
	RoleReader:   {JobRead, TaskRead, AgentRead},
}

// ownerActions are what an application's owners may do on it.
var ownerActions = []Action{JobSubmit, JobRead, JobKill, JobScale, JobUpdate, TaskRead, TaskKill, TaskDebug, TaskLogs}

// appScoped actions name an application; the others are fleet-wide.
func appScoped(a Action) bool {
	switch a {
	case JobSubmit, JobRead, JobKill, JobScale, JobUpdate, TaskRead, TaskKill, TaskDebug, TaskLogs:
		return true
	}
	return false
}
