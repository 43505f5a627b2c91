package task

import "fmt"

// Checker collects every rule a spec breaks, one FieldError each, so a
// caller sees all its mistakes at once. The agent's task validation and
// the scheduler's job validation both use it.
type Checker struct{ errs []*FieldError }

// Failf records that field breaks a rule.
func (c *Checker) Failf(field, format string, a ...any) { c.failf(field, format, a...) }

// Fields are the broken rules recorded so far, in order.
func (c *Checker) Fields() []*FieldError { return c.errs }

func (c *Checker) failf(field, format string, a ...any) {
	c.errs = append(c.errs, &FieldError{Field: field, Rule: fmt.Sprintf(format, a...)})
}

func (c *Checker) rangeCheck(field string, v, lo, hi int64) {
	if v < lo || v > hi {
		c.failf(field, "must be between %d and %d, got %d", lo, hi, v)
	}
}
