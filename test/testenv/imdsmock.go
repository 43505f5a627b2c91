package testenv

import (
	"os/exec"
	"strconv"
	"time"
)

// IMDSMock is AWS's amazon-ec2-metadata-mock, standing in for the host's IMDS.
type IMDSMock struct {
	Endpoint string // http://127.0.0.1:PORT
	Proc     *Process
}

// StartIMDSMock starts ec2-metadata-mock on a free loopback port. Extra
// arguments (e.g. -c config.json) are passed through.
func StartIMDSMock(t TB, args ...string) *IMDSMock {
	t.Helper()
	bin := LookPath(t, "ec2-metadata-mock")
	dir := t.TempDir()
	port := FreePort(t)
	cmd := exec.Command(bin, append([]string{"-n", "127.0.0.1", "-p", itoa(port)}, args...)...)
	cmd.Dir = dir
	p := StartProcess(t, dir, "imds-mock", cmd)
	WaitTCP(t, Addr(port), p, 30*time.Second)
	return &IMDSMock{Endpoint: "http://" + Addr(port), Proc: p}
}

func itoa(i int) string { return strconv.Itoa(i) }
