package isolation

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestHostRunOwnProcessGroup: host commands run outside the agent's
// process group, so a signal to the group does not cut a teardown short.
func TestHostRunOwnProcessGroup(t *testing.T) {
	out, err := hostSystem{}.Run(context.Background(), "sh", "-c", `set -- $(sed 's/.*) //' /proc/$$/stat); echo $3`)
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("pgid %q: %v", out, err)
	}
	if own := syscall.Getpgrp(); pgid == own {
		t.Fatalf("command ran in the caller's process group %d", own)
	}
}
