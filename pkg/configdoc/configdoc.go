// Package configdoc checks that a configuration struct and its reference
// page agree: every key a YAML file may set is documented.
package configdoc

import (
	"fmt"
	"os"
	"reflect"
	"strings"
)

// Keys lists the dotted keys of a configuration struct, named by their json
// tags (as sigs.k8s.io/yaml reads them): nested structs give "a.b", while
// maps, slices and scalars are leaves.
func Keys(v any) []string {
	var out []string
	walk(reflect.TypeOf(v), "", &out)
	return out
}

func walk(t reflect.Type, prefix string, out *[]string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft.PkgPath() != "time" {
			walk(ft, prefix+name+".", out)
			continue
		}
		*out = append(*out, prefix+name)
	}
}

// Undocumented returns the keys doc does not name. A key is named by
// "`a.b.c`", or by "`c`" on a line that also names a sibling as "`a.b.x`"
// (rows such as "`network.ec2.accessKeyID`, `secretAccessKey`").
func Undocumented(doc string, keys []string) []string {
	lines := strings.Split(doc, "\n")
	var missing []string
	for _, k := range keys {
		if strings.Contains(doc, "`"+k+"`") {
			continue
		}
		parent, leaf := "", k
		if i := strings.LastIndex(k, "."); i >= 0 {
			parent, leaf = k[:i+1], k[i+1:]
		}
		found := false
		for _, l := range lines {
			if strings.Contains(l, "`"+leaf+"`") && (parent == "" || strings.Contains(l, "`"+parent)) {
				found = true
				break
			}
		}
		if !found {
			missing = append(missing, k)
		}
	}
	return missing
}

// MissingFrom reads the reference page at path, keeps its section under the
// top-level heading "# "+heading (up to the next top-level heading) and
// returns the keys of v that section does not name.
func MissingFrom(path, heading string, v any) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	_, section, found := strings.Cut("\n"+string(b), "\n# "+heading+"\n")
	if !found {
		return nil, fmt.Errorf("%s: no section %q", path, "# "+heading)
	}
	section, _, _ = strings.Cut(section, "\n# ")
	return Undocumented(section, Keys(v)), nil
}
