package integration

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/schedlink"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
	"github.com/titus-agent/titus-agent/test/schedload"
)

// testPKI writes a CA, a server certificate for 127.0.0.1 and a client
// certificate to dir.
// The client certificate is agent tls-agent's (its URI SAN), the user
// certificate a CLI user's.
type testPKI struct{ ca, serverCert, serverKey, clientCert, clientKey, userCert, userKey string }

func newTestPKI(t *testing.T) testPKI {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "titus test CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP, uris ...*url.URL) (string, string) {
		k := key()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips, URIs: uris}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "PRIVATE KEY", kder)
	}
	p := testPKI{ca: write("ca.pem", "CERTIFICATE", caDER)}
	p.serverCert, p.serverKey = leaf(2, "scheduler", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	agentURI, _ := url.Parse(authn.DefaultAgentURIPrefix + "tls-agent")
	p.clientCert, p.clientKey = leaf(3, "agent", x509.ExtKeyUsageClientAuth, nil, agentURI)
	p.userCert, p.userKey = leaf(4, "user@example.com", x509.ExtKeyUsageClientAuth, nil)
	return p
}

// TestSchedulerAgentStreamTLS: with a certificate and a client CA the
// scheduler speaks only mutual TLS; agents with the CA and a client
// certificate register and run tasks, plaintext or certificate-less agents
// never register.
func TestSchedulerAgentStreamTLS(t *testing.T) {
	begin(t)
	pki := newTestPKI(t)
	server, err := tlsconfig.Files{CertFile: pki.serverCert, KeyFile: pki.serverKey, CAFile: pki.ca}.Server()
	if err != nil {
		t.Fatalf("server tls: %v", err)
	}
	o := schedOptions(t)
	o.TLS = server
	s, _ := startScheduler(t, t.Context(), o)
	waitLeading(t, s)
	creds, err := tlsconfig.Files{CAFile: pki.ca, CertFile: pki.clientCert, KeyFile: pki.clientKey}.DialOption()
	if err != nil {
		t.Fatalf("client tls: %v", err)
	}
	userCreds, err := tlsconfig.Files{CAFile: pki.ca, CertFile: pki.userCert, KeyFile: pki.userKey}.DialOption()
	if err != nil {
		t.Fatalf("client tls: %v", err)
	}
	e := &schedEnv{t: t, ctx: t.Context(), addrs: []string{s.Addr()}, agents: map[string]*schedload.Agent{}}
	cc, err := grpc.NewClient(s.Addr(), userCreds)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	e.api = schedv1.NewSchedulerClient(cc)

	start := func(id string, dial ...grpc.DialOption) *schedload.Agent {
		a := schedload.NewAgent(schedlink.Config{Address: s.Addr(), InstanceID: id, AZ: "az-a", DialOptions: dial,
			Capacity:   schedlink.Capacity{CPUMillicores: 4000, MemoryMiB: 8192},
			MinBackoff: 50 * time.Millisecond, MaxBackoff: 300 * time.Millisecond}, finishAfter(100*time.Millisecond))
		a.Start(e.ctx)
		t.Cleanup(a.Stop)
		return a
	}
	start("tls-agent", creds)
	noCert, err := tlsconfig.Files{CAFile: pki.ca}.DialOption()
	if err != nil {
		t.Fatal(err)
	}
	start("no-client-cert", noCert)
	start("plaintext") // schedlink's default: plaintext
	e.waitAgents(1)
	id := e.submit(jobSpec(&schedv1.BatchJob{Size: 2}))
	e.eventually("job finished over TLS", func() (bool, string) {
		j := e.job(id)
		return j.State == schedv1.JobState_JOB_STATE_FINISHED, j.String()
	})
	time.Sleep(time.Second) // the refused agents keep retrying meanwhile
	resp, err := e.api.ListAgents(e.ctx, &schedv1.ListAgentsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Agents) != 1 || resp.Agents[0].Id != "tls-agent" {
		t.Fatalf("registered agents = %v, want only tls-agent", resp.Agents)
	}
}
