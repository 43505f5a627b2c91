package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// Registry is a private Docker Distribution registry on loopback, plain HTTP.
type Registry struct {
	Host string // 127.0.0.1:PORT
	Proc *Process
	// User and Password, when set, are the only credentials the registry
	// takes (htpasswd); pushes use them.
	User, Password string
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
	return startRegistry(t, "", "")
}

// StartRegistryAuth is StartRegistry requiring basic auth (htpasswd) of
// user and password: an ECR stand-in whose password is the token.
func StartRegistryAuth(t TB, user, password string) *Registry {
	t.Helper()
	return startRegistry(t, user, password)
}

func startRegistry(t TB, user, password string) *Registry {
	t.Helper()
	bin := LookPath(t, "docker-registry")
	dir := t.TempDir()
	host := Addr(FreePort(t))
	cfg := filepath.Join(dir, "config.yml")
	conf := fmt.Sprintf(registryConfig, filepath.Join(dir, "data"), host)
	if user != "" {
		hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
		if err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		htpasswd := filepath.Join(dir, "htpasswd")
		if err := os.WriteFile(htpasswd, []byte(user+":"+string(hash)+"\n"), 0o600); err != nil {
			t.Fatalf("htpasswd: %v", err)
		}
		conf += fmt.Sprintf("auth:\n  htpasswd:\n    realm: titus-test\n    path: %q\n", htpasswd)
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatalf("registry config: %v", err)
	}
	cmd := exec.Command(bin, "serve", cfg)
	cmd.Dir = dir
	p := StartProcess(t, dir, "registry", cmd)
	WaitTCP(t, host, p, 30*time.Second)
	return &Registry{Host: host, Proc: p, User: user, Password: password}
}
