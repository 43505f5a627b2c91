// Command titus-agent is the per-host agent daemon (`titus-agent daemon`)
// and the operator CLI that talks to it over its unix socket.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := newRootCmd().Execute(); err != nil {
		if ce := (*cliError)(nil); !errors.As(err, &ce) || !ce.quiet {
			fmt.Fprintln(os.Stderr, "titus-agent: "+oneLine(err))
		}
		os.Exit(exitCode(err))
	}
}
