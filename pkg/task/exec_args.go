package task

import (
	"fmt"
	"strings"
)

// CheckExecArgs bounds an exec session's command as a task's command is
// bounded (MaxArgs, MaxArgLen, MaxCommandBytes): every relay, queue and
// log line that carries it stays small whatever a caller sends.
func CheckExecArgs(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("args: is required")
	}
	if len(args) > MaxArgs {
		return fmt.Errorf("args: %d arguments, at most %d", len(args), MaxArgs)
	}
	total := 0
	for i, a := range args {
		if len(a) > MaxArgLen {
			return fmt.Errorf("args[%d]: %d bytes, at most %d", i, len(a), MaxArgLen)
		}
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("args[%d]: must not contain NUL", i)
		}
		total += len(a)
	}
	if total > MaxCommandBytes {
		return fmt.Errorf("args: %d bytes together, at most %d", total, MaxCommandBytes)
	}
	return nil
}
