// Command push-busybox builds a busybox image from Debian's busybox-static
// and pushes it to a registry (plain HTTP, loopback); the demo uses it.
package main

import (
	"flag"
	"fmt"

	"github.com/titus-agent/titus-agent/test/testenv"
)

func main() {
	reg := flag.String("registry", "127.0.0.1:5000", "registry host:port")
	repo := flag.String("repo", "busybox", "repository")
	tag := flag.String("tag", "latest", "tag")
	flag.Parse()
	tb := &testenv.Standalone{}
	defer tb.RunCleanups()
	fmt.Println(testenv.PushBusybox(tb, &testenv.Registry{Host: *reg}, *repo, *tag))
}
