package task

import (
	"strings"
	"testing"
)

func TestCheckExecArgs(t *testing.T) {
	many := make([]string, MaxArgs+1)
	for i := range many {
		many[i] = "x"
	}
	fat := make([]string, MaxCommandBytes/MaxArgLen+1)
	for i := range fat {
		fat[i] = strings.Repeat("x", MaxArgLen)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sh", "-c", "ls"}, ""},
		{nil, "args: is required"},
		{many, "args: 257 arguments, at most 256"},
		{[]string{"sh", strings.Repeat("x", MaxArgLen+1)}, "args[1]: 8193 bytes, at most 8192"},
		{[]string{"sh", "a\x00b"}, "args[1]: must not contain NUL"},
		{fat, "args: 73728 bytes together, at most 65536"},
	} {
		err := CheckExecArgs(tc.args)
		if got := ""; err != nil {
			got = err.Error()
			if got != tc.want {
				t.Errorf("%d args: %q, want %q", len(tc.args), got, tc.want)
			}
		} else if tc.want != "" {
			t.Errorf("%d args: accepted, want %q", len(tc.args), tc.want)
		}
	}
}
