// Package authz decides what an authenticated principal may do on the
// scheduler. A policy file maps principals and token groups to roles:
// admin (everything), operator (read everything, drain and undrain hosts,
// read the audit trail), reader (read everything, environment values
// redacted), and the owners of an application (submit, read, scale and
// kill that application's jobs and tasks, and read their environment).
// Each application also lists the IAM roles its jobs may use.
//
// Methods maps every RPC of the scheduler service to the action it
// performs; an RPC missing from it is refused, and a test keeps the table
// complete. Labels under ReservedLabelPrefix widen a task's host access
// and are reserved to admins.
//
// Without a policy file (Open) every principal is allowed everything, as
// before authorization existed; the scheduler permits that only on a
// loopback address or with --insecure.
package authz
