package authz

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"github.com/containerd/errdefs"
	"sigs.k8s.io/yaml"
)

// Subjects names principals directly or by a token group.
type Subjects struct {
	// Principals: certificate SAN/CN or token username, exactly.
	Principals []string `json:"principals,omitempty"`
	// Groups: values of the token's groups claim.
	Groups []string `json:"groups,omitempty"`
}

// Application is one application's entry in the policy.
type Application struct {
	// Owners submit, read, scale and kill the application's jobs and read
	// their environment.
	Owners Subjects `json:"owners"`
	// Debuggers may run commands inside the application's tasks
	// (task.debug: titus-scheduler task exec), read them and their logs
	// (task.logs), nothing else.
	Debuggers Subjects `json:"debuggers,omitempty"`
	// IAMRoles are the role ARNs its jobs may name; a pattern ending in "*"
	// matches every ARN with that prefix. Empty: no role at all.
	IAMRoles []string `json:"iamRoles,omitempty"`
	// TargetGroups are the ELBv2 target group ARNs its service jobs may
	// put their tasks in; a pattern ending in "*" matches every ARN with
	// that prefix. Empty: none. The scheduler owns these groups' targets
	// (docs/loadbalancers.md).
	TargetGroups []string `json:"targetGroups,omitempty"`
	// Images are the image repositories its jobs may run (fully
	// qualified, as docker.io/library/busybox or
	// 123456789012.dkr.ecr.us-east-1.amazonaws.com/billing/web); a
	// pattern ending in "*" matches every repository with that prefix.
	// Empty: any image (docs/security.md says when that is unsafe).
	Images []string `json:"images,omitempty"`
}

// Policy is the policy file.
type Policy struct {
	// Admins may do everything, including jobs with titus.isolation/* labels.
	Admins Subjects `json:"admins"`
	// Operators read everything (environment redacted), drain and undrain
	// hosts, exec into tasks to debug them, and read the audit trail.
	Operators Subjects `json:"operators"`
	// Readers read jobs, tasks and agents, environment redacted.
	Readers Subjects `json:"readers"`
	// Applications by name (a job's spec.application).
	Applications map[string]Application `json:"applications"`
}

var (
	appNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)
	// roleRE is an IAM role ARN (any partition), optionally ending in "*".
	roleRE = regexp.MustCompile(`^arn:[a-z-]+:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]*\*?$`)
	// targetGroupRE is an ELBv2 target group ARN, optionally ending in "*".
	targetGroupRE = regexp.MustCompile(`^arn:[a-z-]+:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:targetgroup/[A-Za-z0-9/-]*\*?$`)
)

// Load reads and checks a policy file.
func Load(path string) (*Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	p, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("policy %s: %w", path, err)
	}
	return p, nil
}

// Parse checks a policy document; unknown keys are refused (a misspelt
// key must not silently grant or drop a permission).
func Parse(b []byte) (*Policy, error) {
	var p Policy
	if err := yaml.UnmarshalStrict(b, &p); err != nil {
		return nil, fmt.Errorf("%w: %w", errdefs.ErrInvalidArgument, err)
	}
	var errs []string
	for name, app := range p.Applications {
		if !appNameRE.MatchString(name) {
			errs = append(errs, fmt.Sprintf("applications.%s: name must match %s", name, appNameRE))
		}
		for i, r := range app.IAMRoles {
			if !roleRE.MatchString(r) || strings.Count(r, "*") > 1 {
				errs = append(errs, fmt.Sprintf("applications.%s.iamRoles[%d]: %q is not an IAM role ARN (a single trailing * is allowed)", name, i, r))
			}
			if strings.HasSuffix(r, "role/*") {
				errs = append(errs, fmt.Sprintf("applications.%s.iamRoles[%d]: %q allows every role of the account; name the roles or a path", name, i, r))
			}
		}
		for i, im := range app.Images {
			if err := checkImagePattern(im); err != nil {
				errs = append(errs, fmt.Sprintf("applications.%s.images[%d]: %q %v", name, i, im, err))
			}
		}
		for i, tg := range app.TargetGroups {
			if !targetGroupRE.MatchString(tg) || strings.Count(tg, "*") > 1 {
				errs = append(errs, fmt.Sprintf("applications.%s.targetGroups[%d]: %q is not an ELBv2 target group ARN (a single trailing * is allowed)", name, i, tg))
			}
			if strings.HasSuffix(tg, "targetgroup/*") {
				errs = append(errs, fmt.Sprintf("applications.%s.targetGroups[%d]: %q allows every target group of the account; name the groups or a name prefix", name, i, tg))
			}
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %s", errdefs.ErrInvalidArgument, strings.Join(errs, "; "))
	}
	return &p, nil
}
