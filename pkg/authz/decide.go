package authz

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/distribution/reference"

	"github.com/titus-agent/titus-agent/pkg/authn"
)

// ReservedLabelPrefix marks labels that widen a task's host access (host
// mounts, devices, user namespaces); only admins may set them.
const ReservedLabelPrefix = "titus.isolation/"

// Decider answers authorization questions for one policy.
type Decider struct{ p *Policy }

// Open allows everything (no policy file).
func Open() *Decider { return &Decider{} }

// New decides by policy p.
func New(p *Policy) *Decider { return &Decider{p: p} }

// IsOpen reports whether there is no policy.
func (d *Decider) IsOpen() bool { return d.p == nil }

func (s Subjects) match(p authn.Principal) bool {
	if slices.Contains(s.Principals, p.Name) {
		return true
	}
	return slices.ContainsFunc(s.Groups, p.InGroup)
}

// Roles lists p's global roles and the applications it owns, sorted.
func (d *Decider) Roles(p authn.Principal) (roles, owned []string) {
	if d.p == nil || p.IsAgent() {
		return nil, nil
	}
	for role, s := range map[string]Subjects{RoleAdmin: d.p.Admins, RoleOperator: d.p.Operators, RoleReader: d.p.Readers} {
		if s.match(p) {
			roles = append(roles, role)
		}
	}
	for name, app := range d.p.Applications {
		if app.Owners.match(p) {
			owned = append(owned, name)
		}
	}
	sort.Strings(roles)
	sort.Strings(owned)
	return roles, owned
}

func (d *Decider) grantsGlobally(p authn.Principal, a Action) bool {
	roles, _ := d.Roles(p)
	for _, r := range roles {
		if slices.Contains(global[r], a) {
			return true
		}
	}
	return false
}

func (d *Decider) owns(p authn.Principal, app string) bool {
	a, ok := d.p.Applications[app]
	return ok && !p.IsAgent() && a.Owners.match(p)
}

// debuggerActions are what an application's debuggers may do on it.
var debuggerActions = []Action{TaskRead, TaskDebug, TaskLogs}

// debugs lists the applications p is a debugger of.
func (d *Decider) debugs(p authn.Principal) []string {
	if d.p == nil || p.IsAgent() {
		return nil
	}
	var out []string
	for name, app := range d.p.Applications {
		if app.Debuggers.match(p) {
			out = append(out, name)
		}
	}
	sort.Strings(out)
	return out
}

func denied(p authn.Principal, format string, a ...any) error {
	return fmt.Errorf("%w: %s %s", errdefs.ErrPermissionDenied, p, fmt.Sprintf(format, a...))
}

// Gate is the check made before any RPC runs: the method must have a
// rule, agents may only connect and only agents may connect, and p must
// hold the method's action globally or on at least one application (the
// handler then checks the job's application with Allow).
func (d *Decider) Gate(p authn.Principal, fullMethod string) (Rule, error) {
	r, ok := Methods[fullMethod]
	if !ok {
		return Rule{}, denied(p, "may not call %s: the method has no authorization rule", fullMethod)
	}
	if r.Action == AgentConnect {
		if p.IsAgent() || d.p == nil {
			return r, nil
		}
		return r, denied(p, "may not connect as an agent: an agent certificate is required")
	}
	if p.IsAgent() {
		return r, denied(p, "may not call %s: an agent certificate may only connect", fullMethod)
	}
	if d.p == nil || d.grantsGlobally(p, r.Action) {
		return r, nil
	}
	if _, owned := d.Roles(p); appScoped(r.Action) && len(owned) > 0 {
		return r, nil
	}
	if slices.Contains(debuggerActions, r.Action) && len(d.debugs(p)) > 0 {
		return r, nil
	}
	return r, denied(p, "may not %s: %s", r.Action, d.describe(p))
}

// Allow reports whether p may perform a on application app ("" for a
// fleet-wide action). Errors wrap errdefs.ErrPermissionDenied.
func (d *Decider) Allow(p authn.Principal, a Action, app string) error {
	if p.IsAgent() {
		return denied(p, "may not %s: an agent certificate may only connect", a)
	}
	if d.p == nil || d.grantsGlobally(p, a) {
		return nil
	}
	if appScoped(a) && app != "" && d.owns(p, app) && slices.Contains(ownerActions, a) {
		return nil
	}
	if app != "" && slices.Contains(debuggerActions, a) && slices.Contains(d.debugs(p), app) {
		return nil
	}
	if app == "" {
		return denied(p, "may not %s: %s", a, d.describe(p))
	}
	return denied(p, "may not %s on application %q: %s", a, app, d.describe(p))
}

func (d *Decider) describe(p authn.Principal) string {
	roles, owned := d.Roles(p)
	if len(roles) == 0 && len(owned) == 0 && len(d.debugs(p)) == 0 {
		return "the policy grants it no role"
	}
	parts := slices.Clone(roles)
	if len(owned) > 0 {
		parts = append(parts, "owner of "+strings.Join(owned, ","))
	}
	if dbg := d.debugs(p); len(dbg) > 0 {
		parts = append(parts, "debugger of "+strings.Join(dbg, ","))
	}
	return "its roles are " + strings.Join(parts, "; ")
}

// MayReadEnv reports whether p sees the environment values of app's jobs:
// admins and the application's owners.
func (d *Decider) MayReadEnv(p authn.Principal, app string) bool {
	if p.IsAgent() {
		return false
	}
	if d.p == nil {
		return true
	}
	roles, _ := d.Roles(p)
	return slices.Contains(roles, RoleAdmin) || d.owns(p, app)
}

// CheckIAMRole refuses a role ARN the policy does not list for app. With
// no policy every role is allowed; with one, an application that lists no
// role may use none.
func (d *Decider) CheckIAMRole(app, arn string) error {
	if d.p == nil || arn == "" {
		return nil
	}
	for _, pat := range d.p.Applications[app].IAMRoles {
		if pat == arn || (strings.HasSuffix(pat, "*") && strings.HasPrefix(arn, strings.TrimSuffix(pat, "*"))) {
			return nil
		}
	}
	return fmt.Errorf("%w: IAM role %q is not in application %q's allowlist (policy applications.%s.iamRoles)", errdefs.ErrPermissionDenied, arn, app, app)
}

// CheckTargetGroup refuses a target group ARN the policy does not list
// for app: a job must not put its tasks into another application's load
// balancer. With no policy every group is allowed; with one, an
// application that lists no group may use none.
func (d *Decider) CheckTargetGroup(app, arn string) error {
	if d.p == nil {
		return nil
	}
	for _, pat := range d.p.Applications[app].TargetGroups {
		if pat == arn || (strings.HasSuffix(pat, "*") && strings.HasPrefix(arn, strings.TrimSuffix(pat, "*"))) {
			return nil
		}
	}
	return fmt.Errorf("%w: target group %q is not in application %q's allowlist (policy applications.%s.targetGroups)", errdefs.ErrPermissionDenied, arn, app, app)
}

// checkImagePattern refuses an images pattern that is not a repository
// name (or a prefix of one ending in "*"), or that allows every image.
func checkImagePattern(p string) error {
	prefix, wild := strings.CutSuffix(p, "*")
	switch {
	case strings.Contains(prefix, "*"):
		return errors.New("is not an image repository (a single trailing * is allowed)")
	case wild && !strings.Contains(prefix, "/"):
		return errors.New("allows the images of whole registries; name a registry host and a repository prefix (host/path/*)")
	case wild:
		return nil
	}
	if n, err := reference.ParseNormalizedNamed(p); err != nil || !reference.IsNameOnly(n) {
		return errors.New("is not an image repository without tag or digest")
	}
	return nil
}

// CheckImage refuses an image whose repository the policy does not list
// for app (applications.<app>.images): with the hosts' own registry
// credentials (registries.ecr) and their shared image cache, naming
// another application's image would run it. With no policy, or no images
// listed for app, every image is allowed.
func (d *Decider) CheckImage(app, image string) error {
	if d.p == nil || len(d.p.Applications[app].Images) == 0 {
		return nil
	}
	named, err := reference.ParseNormalizedNamed(image)
	if err != nil {
		return fmt.Errorf("%w: image %q: %v", errdefs.ErrInvalidArgument, image, err)
	}
	repo := named.Name()
	for _, pat := range d.p.Applications[app].Images {
		if prefix, ok := strings.CutSuffix(pat, "*"); ok {
			if strings.HasPrefix(repo, prefix) {
				return nil
			}
		} else if n, err := reference.ParseNormalizedNamed(pat); err == nil && n.Name() == repo {
			return nil
		}
	}
	return fmt.Errorf("%w: image %q (repository %s) is not in application %q's allowlist (policy applications.%s.images)", errdefs.ErrPermissionDenied, image, repo, app, app)
}

// TargetGroups lists every target group pattern the policy allows any
// application (nil without a policy).
func (d *Decider) TargetGroups() []string {
	if d.p == nil {
		return nil
	}
	var out []string
	for _, app := range d.p.Applications {
		out = append(out, app.TargetGroups...)
	}
	return out
}

// CheckReservedLabels refuses labels under ReservedLabelPrefix unless p is
// an admin (or there is no policy).
func (d *Decider) CheckReservedLabels(p authn.Principal, labelSets ...map[string]string) error {
	if d.p == nil {
		return nil
	}
	if roles, _ := d.Roles(p); slices.Contains(roles, RoleAdmin) {
		return nil
	}
	var reserved []string
	for _, set := range labelSets {
		for _, k := range slices.Sorted(maps.Keys(set)) {
			if strings.HasPrefix(k, ReservedLabelPrefix) {
				reserved = append(reserved, k)
			}
		}
	}
	if len(reserved) > 0 {
		return denied(p, "may not set %s: labels under %s widen host access and are reserved to admins", strings.Join(reserved, ", "), ReservedLabelPrefix)
	}
	return nil
}
