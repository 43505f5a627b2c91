package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/titus-agent/titus-agent/pkg/agent"
	"github.com/titus-agent/titus-agent/pkg/metadataproxy"
)

func newIdentityCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "Task identity documents"}
	var key, docPath, sigPath string
	verify := &cobra.Command{
		Use:   "verify --document FILE --signature FILE",
		Short: "Check a task's instance-identity document against the agent's signing key",
		Example: `  # inside a task: fetch /latest/dynamic/instance-identity/document and /signature
  titus-agent identity verify --document doc.json --signature doc.sig`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pub, err := metadataproxy.ReadPublicKey(key)
			if err != nil {
				return fmt.Errorf("signing key: %w", err)
			}
			doc, err := readFileOrStdin(docPath)
			if err != nil {
				return err
			}
			sig, err := os.ReadFile(sigPath)
			if err != nil {
				return err
			}
			d, err := metadataproxy.VerifyIdentityDocument(doc, sig, pub)
			if err != nil {
				return &cliError{msg: err.Error(), code: 1}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "valid: task %s, ip %s, %s\n", d.TaskID, d.PrivateIP, d.AvailabilityZone)
			return nil
		},
	}
	f := verify.Flags()
	f.StringVar(&key, "key", filepath.Join(agent.DefaultConfig().StateDir, "metadata-key.pem"), "the agent's key (private key file or a PEM public key)")
	f.StringVar(&docPath, "document", "", "the document (- for stdin)")
	f.StringVar(&sigPath, "signature", "", "its base64 signature")
	_ = verify.MarkFlagRequired("document")
	_ = verify.MarkFlagRequired("signature")
	cmd.AddCommand(verify)
	return cmd
}
