package testenv

import (
	"os/exec"
	"time"
)

// Moto is a private moto_server standing in for EC2, STS and IAM.
type Moto struct {
	Endpoint string // http://127.0.0.1:PORT
	Proc     *Process
}

// StartMoto starts moto_server on a free loopback port.
func StartMoto(t TB) *Moto {
	t.Helper()
	bin := LookPath(t, "moto_server")
	dir := t.TempDir()
	port := FreePort(t)
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", itoa(port))
	cmd.Dir = dir
	p := StartProcess(t, dir, "moto", cmd)
	WaitTCP(t, Addr(port), p, 60*time.Second)
	return &Moto{Endpoint: "http://" + Addr(port), Proc: p}
}
