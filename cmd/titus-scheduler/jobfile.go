package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	yaml3 "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
	"sigs.k8s.io/yaml"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
)

// parseJobFile reads a job file (YAML or JSON). A mistake is reported at
// the file's own line and column with the field's path, before the
// spec is converted: an unknown field, or a value YAML typed as a
// boolean or number where a string belongs (say what to quote).
func parseJobFile(name string, b []byte) (*schedv1.JobSpec, error) {
	var doc yaml3.Node
	if err := yaml3.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	spec := &schedv1.JobSpec{}
	if len(doc.Content) > 0 {
		if err := checkNode(doc.Content[0], spec.ProtoReflect().Descriptor(), ""); err != nil {
			return nil, fmt.Errorf("%s:%w", name, err)
		}
	}
	if len(doc.Content) > 0 {
		// The check may have rewritten values (durations) for protojson.
		out, err := yaml3.Marshal(doc.Content[0])
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		b = out
	}
	js, err := yaml.YAMLToJSON(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := protojson.Unmarshal(js, spec); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return spec, nil
}

// fieldError is a mistake at a line and column of the job file.
type fieldError struct {
	line, col int
	path, msg string
}

func (e *fieldError) Error() string {
	return fmt.Sprintf("%d:%d: %s: %s", e.line, e.col, e.path, e.msg)
}

func at(n *yaml3.Node, path, format string, a ...any) error {
	return &fieldError{line: n.Line, col: n.Column, path: path, msg: fmt.Sprintf(format, a...)}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// checkNode checks a mapping node against message md.
func checkNode(n *yaml3.Node, md protoreflect.MessageDescriptor, path string) error {
	if n.Kind == yaml3.AliasNode {
		n = n.Alias
	}
	if n.Kind != yaml3.MappingNode {
		if n.Tag == "!!null" {
			return nil
		}
		return at(n, cmpOr(path, "(top)"), "must be a mapping of fields")
	}
	seen := map[protoreflect.FieldNumber]string{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		written := k.Value
		if canon, ok := fieldAliases[md.FullName()][k.Value]; ok {
			k.Value = canon // for protojson, which knows the proto's names only
		}
		fd := md.Fields().ByJSONName(k.Value)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			return at(k, join(path, written), "unknown field %q", written)
		}
		if prev, ok := seen[fd.Number()]; ok {
			return at(k, join(path, written), "the same field as %s: give one of them", prev)
		}
		seen[fd.Number()] = written
		if err := checkValue(v, fd, join(path, written)); err != nil {
			return err
		}
	}
	return nil
}

// fieldAliases are other names a job file may give fields, by message:
// the spelling of the issue that asked for load balancers
// (loadBalancers: [{targetGroupArn, port}]) beside the API's
// (targetGroups: [{arn, port}]).
var fieldAliases = map[protoreflect.FullName]map[string]string{
	"titus.scheduler.v1.ServiceJob":  {"loadBalancers": "targetGroups", "load_balancers": "targetGroups"},
	"titus.scheduler.v1.TargetGroup": {"targetGroupArn": "arn", "target_group_arn": "arn"},
}

func checkValue(v *yaml3.Node, fd protoreflect.FieldDescriptor, path string) error {
	if v.Kind == yaml3.AliasNode {
		v = v.Alias
	}
	switch {
	case fd.IsMap():
		if v.Kind != yaml3.MappingNode {
			return nullOr(v, path, "must be a mapping")
		}
		for i := 0; i+1 < len(v.Content); i += 2 {
			if err := checkSingle(v.Content[i+1], fd.MapValue(), path+"."+v.Content[i].Value); err != nil {
				return err
			}
		}
		return nil
	case fd.IsList():
		if v.Kind != yaml3.SequenceNode {
			return nullOr(v, path, "must be a list")
		}
		for i, e := range v.Content {
			if err := checkSingle(e, fd, fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	}
	return checkSingle(v, fd, path)
}

func nullOr(v *yaml3.Node, path, msg string) error {
	if v.Kind == yaml3.ScalarNode && v.Tag == "!!null" {
		return nil
	}
	return at(v, path, "%s", msg)
}

// checkSingle checks one value (a list element or map value included).
func checkSingle(v *yaml3.Node, fd protoreflect.FieldDescriptor, path string) error {
	if v.Kind == yaml3.AliasNode {
		v = v.Alias
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		if fd.Message().FullName() == "google.protobuf.Duration" {
			// Written as a string: 10s, 1500ms, 1m30s.
			if v.Kind != yaml3.ScalarNode || v.Tag != "!!str" {
				return at(v, path, "must be a duration like 10s or 1500ms, got %q", v.Value)
			}
			d, err := time.ParseDuration(v.Value)
			if err != nil {
				return at(v, path, "must be a duration like 10s or 1500ms, got %q", v.Value)
			}
			// protojson reads seconds only ("1.5s"): rewrite it so.
			v.Value = strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
			return nil
		}
		return checkNode(v, fd.Message(), path)
	case protoreflect.StringKind:
		if v.Kind == yaml3.ScalarNode && v.Tag != "!!str" && v.Tag != "!!null" {
			what := map[string]string{"!!bool": "a boolean", "!!int": "a number", "!!float": "a number"}[v.Tag]
			if what == "" {
				what = "a " + strings.TrimPrefix(v.Tag, "!!")
			}
			return at(v, path, "YAML reads %s as %s, not a string: quote it (%q)", v.Value, what, v.Value)
		}
		if v.Kind != yaml3.ScalarNode {
			return at(v, path, "must be a string")
		}
	}
	return nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
