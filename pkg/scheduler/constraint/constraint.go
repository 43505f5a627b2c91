// Package constraint parses and evaluates placement constraints: "attribute
// op value" expressions over a host's attributes (its instance type, zone,
// AMI, agent version, kernel, cgroup mode, GPUs and operator labels).
//
// It knows only host attributes: a constraint can tell a job where it may
// run, never what another tenant runs where. Expressions are bounded (length,
// list size, regex program size) so a tenant cannot make placement slow, and
// a Matcher answers each distinct attribute value once, so placement never
// runs a regex per host per task.
package constraint

import (
	"errors"
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strconv"
	"strings"
)

// Host attribute names.
const (
	AttrInstanceType   = "instance.type"
	AttrInstanceFamily = "instance.family"
	AttrZone           = "zone"
	AttrAMI            = "ami"
	AttrAgentVersion   = "agent.version"
	AttrKernel         = "kernel"
	AttrCgroup         = "cgroup"
	AttrGPUCount       = "gpu.count"
	AttrGPUModel       = "gpu.model"
	AttrGPUMemory      = "gpu.memoryMiB"
	// LabelPrefix names a host label from the agent's configuration: label.<key>.
	LabelPrefix = "label."
)

// Attributes is the list of attribute names a constraint may use, besides label.<key>.
var Attributes = []string{AttrInstanceType, AttrInstanceFamily, AttrZone, AttrAMI, AttrAgentVersion, AttrKernel, AttrCgroup,
	AttrGPUCount, AttrGPUModel, AttrGPUMemory}

// Bounds on what a job may ask, so no constraint makes placement slow.
const (
	MaxLen        = 512 // bytes of one constraint
	MaxValues     = 64  // values of one in / not in list
	MaxRegexLen   = 256 // bytes of one regex
	MaxRegexInsts = 1000
)

// ErrSyntax is wrapped by every parse error.
var ErrSyntax = errors.New("constraint syntax")

// Op is a comparison.
type Op int

// Ops, with their spelling.
const (
	Eq       Op = iota + 1 // =
	Ne                     // !=
	In                     // in [a, b]
	NotIn                  // not in [a, b]
	Match                  // =~ regex
	NotMatch               // !~ regex
	Lt                     // < (version compare)
	Le                     // <=
	Gt                     // >
	Ge                     // >=
)

var opNames = map[Op]string{Eq: "=", Ne: "!=", In: "in", NotIn: "not in", Match: "=~", NotMatch: "!~", Lt: "<", Le: "<=", Gt: ">", Ge: ">="}

func (o Op) String() string { return opNames[o] }

// Constraint is one parsed "attribute op value".
type Constraint struct {
	Attr   string
	Op     Op
	Values []string // one value, except for in / not in
	re     *regexp.Regexp
}

// String is the constraint in its canonical spelling.
func (c Constraint) String() string {
	switch c.Op {
	case In, NotIn:
		return fmt.Sprintf("%s %s [%s]", c.Attr, c.Op, strings.Join(c.Values, ", "))
	}
	return fmt.Sprintf("%s %s %s", c.Attr, c.Op, c.Values[0])
}

var attrRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.\-/]*$`)

// Parse reads "attribute op value". Attributes are those of Attributes or
// label.<key>; ops are =, !=, in, not in, =~ and !~ (RE2 regex, unanchored),
// <, <=, >, >= (version compare: dotted numbers compare numerically).
func Parse(s string) (Constraint, error) {
	if len(s) > MaxLen {
		return Constraint{}, fmt.Errorf("%w: longer than %d bytes", ErrSyntax, MaxLen)
	}
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return strings.ContainsRune(" \t=!<>~", r) })
	if i <= 0 {
		return Constraint{}, fmt.Errorf("%w: want \"attribute op value\", got %q", ErrSyntax, s)
	}
	c := Constraint{Attr: s[:i]}
	if err := checkAttr(c.Attr); err != nil {
		return Constraint{}, err
	}
	rest := strings.TrimLeft(s[i:], " \t")
	var op string
	for _, o := range []string{"not in", "!=", "=~", "!~", "<=", ">=", "==", "in", "=", "<", ">"} {
		if strings.HasPrefix(rest, o) && (o[0] != 'n' && o[0] != 'i' || len(rest) > len(o) && (rest[len(o)] == ' ' || rest[len(o)] == '[')) {
			op = o
			break
		}
	}
	switch op {
	case "=", "==":
		c.Op = Eq
	case "!=":
		c.Op = Ne
	case "in":
		c.Op = In
	case "not in":
		c.Op = NotIn
	case "=~":
		c.Op = Match
	case "!~":
		c.Op = NotMatch
	case "<":
		c.Op = Lt
	case "<=":
		c.Op = Le
	case ">":
		c.Op = Gt
	case ">=":
		c.Op = Ge
	default:
		return Constraint{}, fmt.Errorf("%w: %q: want an operator (=, !=, in, not in, =~, !~, <, <=, >, >=) after %q", ErrSyntax, s, c.Attr)
	}
	val := strings.TrimSpace(rest[len(op):])
	switch c.Op {
	case In, NotIn:
		vs, err := parseList(val)
		if err != nil {
			return Constraint{}, fmt.Errorf("%w: %q: %v", ErrSyntax, s, err)
		}
		c.Values = vs
	case Match, NotMatch:
		v := val
		if strings.HasPrefix(v, `"`) {
			var err error
			if v, err = strconv.Unquote(v); err != nil {
				return Constraint{}, fmt.Errorf("%w: %q: bad quoted regex", ErrSyntax, s)
			}
		}
		if v == "" {
			return Constraint{}, fmt.Errorf("%w: %q: no regex after %s", ErrSyntax, s, c.Op)
		}
		c.Values = []string{v}
	default:
		v, err := unquote(val)
		if err != nil {
			return Constraint{}, fmt.Errorf("%w: %q: %v", ErrSyntax, s, err)
		}
		if v == "" && c.Op != Eq && c.Op != Ne {
			return Constraint{}, fmt.Errorf("%w: %q: no value after %s", ErrSyntax, s, c.Op)
		}
		c.Values = []string{v}
	}
	if c.Op == Match || c.Op == NotMatch {
		re, err := compileBounded(c.Values[0])
		if err != nil {
			return Constraint{}, fmt.Errorf("%w: %q: %v", ErrSyntax, s, err)
		}
		c.re = re
	}
	return c, nil
}

func checkAttr(a string) error {
	if !attrRE.MatchString(a) {
		return fmt.Errorf("%w: bad attribute name %q", ErrSyntax, a)
	}
	if slices.Contains(Attributes, a) {
		return nil
	}
	if k, ok := strings.CutPrefix(a, LabelPrefix); ok && k != "" {
		return nil
	}
	return fmt.Errorf("%w: unknown attribute %q (known: %s, %s<key>)", ErrSyntax, a, strings.Join(Attributes, ", "), LabelPrefix)
}

// parseList reads "[a, b, c]" (values may be quoted).
func parseList(s string) ([]string, error) {
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return nil, errors.New("want a list: [a, b]")
	}
	inner := strings.TrimSpace(s[1 : len(s)-1])
	if inner == "" {
		return nil, errors.New("empty list")
	}
	var out []string
	for _, p := range strings.Split(inner, ",") {
		v, err := unquote(strings.TrimSpace(p))
		if err != nil {
			return nil, err
		}
		if v == "" {
			return nil, errors.New("empty value in list")
		}
		out = append(out, v)
	}
	if len(out) > MaxValues {
		return nil, fmt.Errorf("more than %d values", MaxValues)
	}
	return out, nil
}

func unquote(s string) (string, error) {
	if strings.HasPrefix(s, `"`) {
		v, err := strconv.Unquote(s)
		if err != nil {
			return "", fmt.Errorf("bad quoted value %s", s)
		}
		return v, nil
	}
	if strings.ContainsAny(s, "\"[],") {
		return "", fmt.Errorf("value %q: quote values holding \" [ ] or ,", s)
	}
	return s, nil
}

// compileBounded compiles an RE2 regex no longer than MaxRegexLen whose
// program has at most MaxRegexInsts instructions (x{1000} is short but big).
func compileBounded(expr string) (*regexp.Regexp, error) {
	if len(expr) > MaxRegexLen {
		return nil, fmt.Errorf("regex longer than %d bytes", MaxRegexLen)
	}
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("regex: %w", err)
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, fmt.Errorf("regex: %w", err)
	}
	if len(prog.Inst) > MaxRegexInsts {
		return nil, fmt.Errorf("regex too complex (%d instructions, at most %d)", len(prog.Inst), MaxRegexInsts)
	}
	return regexp.Compile(expr)
}

// Regex reports whether the constraint runs a regex.
func (c Constraint) Regex() bool { return c.re != nil }

// Holds reports whether a host whose attribute is value (present says
// whether it has the attribute at all) satisfies c. A host without the
// attribute satisfies only the negative ops (!=, not in, !~).
func (c Constraint) Holds(value string, present bool) bool {
	if !present {
		return c.Op == Ne || c.Op == NotIn || c.Op == NotMatch
	}
	switch c.Op {
	case Eq:
		return value == c.Values[0]
	case Ne:
		return value != c.Values[0]
	case In:
		return slices.Contains(c.Values, value)
	case NotIn:
		return !slices.Contains(c.Values, value)
	case Match:
		return c.re.MatchString(value)
	case NotMatch:
		return !c.re.MatchString(value)
	}
	d := CompareVersions(value, c.Values[0])
	switch c.Op {
	case Lt:
		return d < 0
	case Le:
		return d <= 0
	case Gt:
		return d > 0
	case Ge:
		return d >= 0
	}
	return false
}

// CompareVersions compares dotted versions: segments split at . - + _ and
// compared as numbers when both are numbers, else as strings; a missing
// segment counts as 0 ("6.1" = "6.1.0" < "6.1.0-13").
func CompareVersions(a, b string) int {
	split := func(s string) []string {
		return strings.FieldsFunc(s, func(r rune) bool { return r == '.' || r == '-' || r == '+' || r == '_' })
	}
	as, bs := split(a), split(b)
	for i := range max(len(as), len(bs)) {
		x, y := "0", "0"
		if i < len(as) {
			x = as[i]
		}
		if i < len(bs) {
			y = bs[i]
		}
		xn, xerr := strconv.ParseUint(x, 10, 64)
		yn, yerr := strconv.ParseUint(y, 10, 64)
		switch {
		case xerr == nil && yerr == nil:
			if xn != yn {
				if xn < yn {
					return -1
				}
				return 1
			}
		case x != y:
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}
