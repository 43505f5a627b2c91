// Command titus-logger is the task log driver containerd's shim runs for each
// task (see package tasklog). It is not meant to be run by hand.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/titus-agent/titus-agent/pkg/tasklog"
)

func main() {
	if err := tasklog.Run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "titus-logger:", err)
		os.Exit(1)
	}
}
