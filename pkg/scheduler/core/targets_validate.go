package core

import (
	"regexp"
	"strconv"

	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// targetGroupARNRE is an ELBv2 target group ARN, any partition.
var targetGroupARNRE = regexp.MustCompile(`^arn:[a-z-]+:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:targetgroup/[A-Za-z0-9-]{1,32}/[0-9a-f]{16}$`)

// ValidTargetGroupARN reports whether arn is an ELBv2 target group ARN.
func ValidTargetGroupARN(arn string) bool { return targetGroupARNRE.MatchString(arn) }

// checkTargetGroups checks a service job's target groups: well-formed
// ARNs, a port, no group twice, at most model.MaxTargetGroups.
func checkTargetGroups(c *task.Checker, tgs []model.TargetGroup) {
	if len(tgs) > model.MaxTargetGroups {
		c.Failf("service.target_groups", "must have at most %d entries, got %d", model.MaxTargetGroups, len(tgs))
	}
	seen := map[string]bool{}
	for i, tg := range tgs {
		f := "service.target_groups[" + strconv.Itoa(i) + "]"
		if !ValidTargetGroupARN(tg.ARN) {
			c.Failf(f+".arn", "%.200q is not an ELBv2 target group ARN (arn:aws:elasticloadbalancing:<region>:<account>:targetgroup/<name>/<id>)", tg.ARN)
		}
		if tg.Port < 1 || tg.Port > 65535 {
			c.Failf(f+".port", "must be between 1 and 65535, got %d", tg.Port)
		}
		if seen[tg.ARN] {
			c.Failf(f+".arn", "names target group %s twice", tg.ARN)
		}
		seen[tg.ARN] = true
	}
}
