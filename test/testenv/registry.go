package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"
)

// Registry is a private Docker Distribution registry on loopback, plain HTTP.
type Registry struct {
	Host string // 127.0.0.1:PORT
	Proc *Process
}

const registryConfig = `version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %q
  delete:
    enabled: true
http:
  addr: %q
`

// StartRegistry starts Debian's docker-registry on a free loopback port with
// storage in a temporary directory.
func StartRegistry(t TB) *Registry {
	t.Helper()
	bin := LookPath(t, "docker-registry")
	dir := t.TempDir()
	host := Addr(FreePort(t))
	cfg := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, registryConfig, filepath.Join(dir, "data"), host), 0o600); err != nil {
		t.Fatalf("registry config: %v", err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Dir = dir
	p := StartProcess(t, dir, "registry", cmd)
	WaitTCP(t, host, p, 30*time.Second)
	return &Registry{Host: host, Proc: p}
}
