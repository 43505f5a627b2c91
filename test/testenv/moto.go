package testenv

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"time"
)

// Moto is a private moto_server standing in for EC2, STS and IAM.
type Moto struct {
	Endpoint string // http://127.0.0.1:PORT
	Proc     *Process
}

// StartMoto starts moto_server on a free loopback port and waits until its
// STS answers: moto loads a service on its first request, which takes
// seconds in the VM lane's emulated guest, longer than the agent's own
// timeout for one STS call.
func StartMoto(t TB) *Moto {
	t.Helper()
	bin := LookPath(t, "moto_server")
	dir := t.TempDir()
	port := FreePort(t)
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", itoa(port))
	cmd.Dir = dir
	p := StartProcess(t, dir, "moto", cmd)
	WaitTCP(t, Addr(port), p, 60*time.Second)
	m := &Moto{Endpoint: "http://" + Addr(port), Proc: p}
	if err := m.warmSTS(Scaled(60 * time.Second)); err != nil {
		t.Fatalf("moto's STS: %v\n%s", err, tail(p.Log(), 40))
	}
	return m
}

// warmSTS asks STS GetCallerIdentity (moto picks the service from the
// signature's credential scope; it checks no signature).
func (m *Moto) warmSTS(timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	form := url.Values{"Action": {"GetCallerIdentity"}, "Version": {"2011-06-15"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, m.Endpoint+"/", strings.NewReader(form.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "GetCallerIdentityResult") {
		return fmt.Errorf("GetCallerIdentity: HTTP %d: %s", resp.StatusCode, body)
	}
	return nil
}
