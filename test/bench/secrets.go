package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os/exec"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	"github.com/vishvananda/netlink"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
	"github.com/titus-agent/titus-agent/test/testenv"
)

func init() {
	part("secrets", 45, func(tb *testenv.Standalone, f benchFlags) { benchSecrets(tb, min(f.n, 30)) })
}

// benchSecrets measures a launch with two secrets (a Secrets Manager JSON
// key as env, an SSM SecureString as a file) against the same launch
// without, both with an IAM role (the role session is fetched either way;
// the secrets hook shares it), interleaved in the same run.
func benchSecrets(tb *testenv.Standalone, n int) {
	ctx := context.Background()
	ctd := testenv.StartContainerd(tb)
	reg := testenv.StartRegistry(tb)
	image := testenv.PushBusybox(tb, reg, "busybox", "latest")
	moto := testenv.StartMoto(tb)

	cfg := aws.Config{Region: "us-east-1", Credentials: credentials.NewStaticCredentialsProvider("testing", "testing", "")}
	sm := secretsmanager.NewFromConfig(cfg, func(o *secretsmanager.Options) { o.BaseEndpoint = aws.String(moto.Endpoint) })
	out, err := sm.CreateSecret(ctx, &secretsmanager.CreateSecretInput{Name: aws.String("bench/db"), SecretString: aws.String(`{"password":"bench"}`)})
	if err != nil {
		tb.Fatalf("create secret: %v", err)
	}
	sc := ssm.NewFromConfig(cfg, func(o *ssm.Options) { o.BaseEndpoint = aws.String(moto.Endpoint) })
	if _, err := sc.PutParameter(ctx, &ssm.PutParameterInput{Name: aws.String("/bench/token"), Value: aws.String("tok"), Type: ssmtypes.ParameterTypeSecureString}); err != nil {
		tb.Fatalf("put parameter: %v", err)
	}

	b := make([]byte, 3)
	rand.Read(b)
	octet, _ := rand.Int(rand.Reader, big.NewInt(250))
	bridge, cidr := "tbs"+hex.EncodeToString(b), fmt.Sprintf("198.19.%d.0/24", octet.Int64()+1)
	tb.Cleanup(func() {
		if l, err := netlink.LinkByName(bridge); err == nil {
			netlink.LinkDel(l)
		}
		exec.Command("nft", "delete", "table", "ip", "titus_"+bridge).Run()
		exec.Command("nft", "delete", "table", "inet", "titus_fw_"+bridge).Run()
		exec.Command("nft", "delete", "table", "bridge", "titus_fw_"+bridge).Run()
	})
	a := testenv.StartAgent(tb, testenv.AgentOptions{Containerd: ctd.Address, PlainHTTP: []string{reg.Host}, Config: fmt.Sprintf(`logLevel: %s
network:
  provider: local
  netnsDir: {{DIR}}/netns
  dns: [198.18.0.2]
  local:
    cidr: %s
    bridge: %s
metadata:
  enabled: true
  stsEndpoint: %s
  region: us-east-1
  accessKeyID: testing
  secretAccessKey: testing
secrets:
  dir: {{DIR}}/secrets
  endpoint: %s
`, agentLogLevel, cidr, bridge, moto.Endpoint, moto.Endpoint)})
	events, err := watch(ctx, a)
	if err != nil {
		tb.Fatalf("watch: %v", err)
	}
	spec := func(id string, secrets bool) *agentv1.TaskSpec {
		s := &agentv1.TaskSpec{Id: id, OwnerEmail: "bench@example.com", Image: image, Command: []string{"sleep", "1000"},
			Resources: &agentv1.Resources{CpuMillicores: 100, MemoryMib: 32}, KillGracePeriodSeconds: 1,
			IamRoleArn: "arn:aws:iam::123456789012:role/bench"}
		if secrets {
			s.Secrets = []*agentv1.SecretRef{
				{Name: "DB_PASSWORD", From: aws.ToString(out.ARN) + ":password", As: "env"},
				{Name: "token", From: "/bench/token"},
			}
		}
		return s
	}
	for _, warm := range []string{"warm-plain", "warm-secrets"} {
		if _, err := agentLaunchSpec(ctx, a, events, spec(warm, warm == "warm-secrets")); err != nil {
			tb.Fatalf("warm: %v\n%s", err, a.Log())
		}
		killAll(ctx, a, []string{warm})
		waitGone(ctx, a, []string{warm})
	}
	var plain, withSecrets sample
	for i := 0; i < n; i++ {
		ids := []string{fmt.Sprintf("plain-%d", i), fmt.Sprintf("secrets-%d", i)}
		// Alternate which goes first, so neither always follows a teardown.
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, k := range order {
			d, err := agentLaunchSpec(ctx, a, events, spec(ids[k], k == 1))
			if err != nil {
				tb.Fatalf("launch %s: %v\n%s", ids[k], err, a.Log())
			}
			if k == 0 {
				plain = append(plain, d)
			} else {
				withSecrets = append(withSecrets, d)
			}
		}
		killAll(ctx, a, ids)
		waitGone(ctx, a, ids)
	}
	fmt.Printf("\n== secrets: launch with two secrets vs without, %d each (both with an IAM role; same run)\n", n)
	fmt.Printf("%-44s %10s %10s\n", "", "p50", "p99")
	fmt.Printf("%-44s %10s %10s\n", "LaunchTask -> Running, role, no secrets", ms(plain.pct(0.5)), ms(plain.pct(0.99)))
	fmt.Printf("%-44s %10s %10s\n", "same + SM JSON key as env + SSM as file", ms(withSecrets.pct(0.5)), ms(withSecrets.pct(0.99)))
	verdict := "met"
	if float64(withSecrets.pct(0.5)) > 1.1*float64(plain.pct(0.5)) {
		verdict = "MISSED"
	}
	fmt.Printf("%-44s %10s %10s   (target p50 <= 1.10x: %s)\n", "ratio with / without secrets", ratio(withSecrets.pct(0.5), plain.pct(0.5)), ratio(withSecrets.pct(0.99), plain.pct(0.99)), verdict)
}
