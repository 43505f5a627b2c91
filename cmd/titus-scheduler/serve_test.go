package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/titus-agent/titus-agent/pkg/authn"
	"github.com/titus-agent/titus-agent/pkg/scheduler"
	"github.com/titus-agent/titus-agent/pkg/tlsconfig"
)

// TestConfigFileAuth: the auth keys, insecure and the caps come from the
// file unless a flag overrides them.
func TestConfigFileAuth(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scheduler.yaml")
	doc := `
insecure: true
maxLiveJobs: 7
maxLiveJobsPerApplication: 3
maxRequestBytes: 4096
auth:
  policyFile: /etc/p.yaml
  token: {jwksFile: /etc/j.json, issuer: https://idp, audience: titus, usernameClaim: sub}
`
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var (
		o        scheduler.Options
		ep, ml   string
		tlsFiles tlsconfig.Files
		auth     authConfig
	)
	auth.PolicyFile = "/flag/p.yaml"
	changed := func(f string) bool { return f == "policy" }
	if err := applyConfigFile(path, changed, &o, &ep, &ml, &tlsFiles, &auth, &lbConfig{}, &logsConfig{}); err != nil {
		t.Fatal(err)
	}
	want := authConfig{PolicyFile: "/flag/p.yaml", Token: authn.TokenConfig{JWKSFile: "/etc/j.json", Issuer: "https://idp", Audience: "titus", UsernameClaim: "sub"}}
	if diff := cmp.Diff(want, auth); diff != "" {
		t.Errorf("auth (-want +got):\n%s", diff)
	}
	if !o.Insecure || o.MaxLiveJobs != 7 || o.MaxLiveJobsPerApplication != 3 || o.MaxRequestBytes != 4096 {
		t.Errorf("options = insecure %v, maxLiveJobs %d, perApp %d, maxRequestBytes %d", o.Insecure, o.MaxLiveJobs, o.MaxLiveJobsPerApplication, o.MaxRequestBytes)
	}
	if err := os.WriteFile(path, []byte("auth: {policy: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(path, changed, &o, &ep, &ml, &tlsFiles, &auth, &lbConfig{}, &logsConfig{}); err == nil {
		t.Error("a misspelt auth key was accepted")
	}
}

// TestConfigFileLoadBalancers: the loadBalancers section, flags winning.
func TestConfigFileLoadBalancers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scheduler.yaml")
	doc := "loadBalancers: {region: us-east-1, endpoint: http://127.0.0.1:5001, maxDeregistrationWait: 45s, reconcileInterval: 10s}\n"
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	var (
		o        scheduler.Options
		ep, ml   string
		tlsFiles tlsconfig.Files
		auth     authConfig
		lbc      lbConfig
	)
	o.TargetReconcileInterval = 3 * time.Second
	changed := func(f string) bool { return f == "lb-reconcile-interval" }
	if err := applyConfigFile(path, changed, &o, &ep, &ml, &tlsFiles, &auth, &lbc, &logsConfig{}); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(lbConfig{Region: "us-east-1", Endpoint: "http://127.0.0.1:5001"}, lbConfig{Region: lbc.Region, Endpoint: lbc.Endpoint}); diff != "" {
		t.Errorf("loadBalancers (-want +got):\n%s", diff)
	}
	if o.MaxDeregistrationWait != 45*time.Second || o.TargetReconcileInterval != 3*time.Second {
		t.Errorf("wait %v, reconcile %v; want 45s from the file, 3s from the flag", o.MaxDeregistrationWait, o.TargetReconcileInterval)
	}
	if err := os.WriteFile(path, []byte("loadBalancers: {maxDeregistrationWait: soon}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := applyConfigFile(path, changed, &o, &ep, &ml, &tlsFiles, &auth, &lbc, &logsConfig{}); err == nil {
		t.Error("a malformed duration was accepted")
	}
}

// TestConfigFileExec: exec.maxSessionsPerCaller from the file; a
// negative bound is refused, naming the key.
func TestConfigFileExec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scheduler.yaml")
	apply := func(doc string) (scheduler.Options, error) {
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		var (
			o        scheduler.Options
			ep, ml   string
			tlsFiles tlsconfig.Files
			auth     authConfig
		)
		err := applyConfigFile(path, func(string) bool { return false }, &o, &ep, &ml, &tlsFiles, &auth, &lbConfig{}, &logsConfig{})
		return o, err
	}
	o, err := apply("exec: {maxSessionsPerCaller: 3}\n")
	if err != nil || o.ExecMaxSessionsPerCaller != 3 {
		t.Errorf("exec.maxSessionsPerCaller 3: %d, %v", o.ExecMaxSessionsPerCaller, err)
	}
	if _, err := apply("exec: {maxSessionsPerCaller: -1}\n"); err == nil || !strings.Contains(err.Error(), "exec.maxSessionsPerCaller") {
		t.Errorf("a negative bound: %v, want an error naming the key", err)
	}
}

// TestConfigFileAudit: the audit section's bounds from the file; negative
// ones are refused, naming the key.
func TestConfigFileAudit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scheduler.yaml")
	apply := func(doc string) (scheduler.Options, error) {
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		var (
			o        scheduler.Options
			ep, ml   string
			tlsFiles tlsconfig.Files
			auth     authConfig
		)
		err := applyConfigFile(path, func(string) bool { return false }, &o, &ep, &ml, &tlsFiles, &auth, &lbConfig{}, &logsConfig{})
		return o, err
	}
	o, err := apply("audit: {maxAge: 48h, maxRecords: 500, maxRecordsPerPrincipal: 50, refusalBurst: 7, refusalEvery: 1m, refusalWindow: 5m}\n")
	if err != nil || o.AuditMaxAge != 48*time.Hour || o.AuditMaxRecords != 500 || o.AuditMaxRecordsPerPrincipal != 50 || o.AuditRefusalBurst != 7 || o.AuditRefusalEvery != time.Minute || o.AuditRefusalWindow != 5*time.Minute {
		t.Errorf("audit section: %+v, %v", o, err)
	}
	for _, bad := range []struct{ doc, key string }{
		{"audit: {refusalBurst: -1}\n", "audit.refusalBurst"},
		{"audit: {maxRecordsPerPrincipal: -1}\n", "audit.maxRecordsPerPrincipal"},
		{"audit: {refusalEvery: -1m}\n", "audit.refusalEvery"},
		{"audit: {refusalWindow: soon}\n", "audit-refusal-window"},
	} {
		if _, err := apply(bad.doc); err == nil || !strings.Contains(err.Error(), bad.key) {
			t.Errorf("%q: %v, want an error naming %s", bad.doc, err, bad.key)
		}
	}
}
