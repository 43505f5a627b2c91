package task

import (
	"fmt"
	"path"
	"regexp"
	"strings"
)

// SecretAs is how a secret reaches the task.
type SecretAs string

// Ways a secret reaches the task.
const (
	// SecretAsFile writes the value to Path below SecretsMountPath, in a
	// per-task tmpfs mounted read-only into the container, mode 0400 and
	// owned by the task's user. The default.
	SecretAsFile SecretAs = "file"
	// SecretAsEnv sets the environment variable Name to the value.
	SecretAsEnv SecretAs = "env"
)

// SecretsMountPath is where a task's file secrets are, inside its container.
const SecretsMountPath = "/run/secrets"

// SecretRef names a secret the agent fetches with the task's own IAM role
// when the task starts. The spec (and so every store and view of it)
// carries only this reference, never the value.
type SecretRef struct {
	// Name is the environment variable (as env), or the secret's name and
	// default Path (as file).
	Name string `json:"name"`
	// From is where the value is: a Secrets Manager secret ARN, optionally
	// followed by ":JSONKEY" to take one top-level key of a JSON secret,
	// or an SSM parameter (SecureString or String) by name or ARN. See
	// ParseSecretSource.
	From string   `json:"from"`
	As   SecretAs `json:"as,omitempty"`
	// Path is the file's path relative to SecretsMountPath (as file;
	// default Name).
	Path string `json:"path,omitempty"`
}

// Limits of a spec's secrets (documented in docs/task-spec.md). A value is
// checked against MaxSecretBytes (and MaxEnvValueLen as env) and all values
// against MaxSecretsTotalBytes when the agent fetches them.
const (
	MaxSecrets           = 32
	MaxSecretNameLen     = 128
	MaxSecretFromLen     = 2048
	MaxSecretPathLen     = 255
	MaxSecretPathDepth   = 8
	MaxSecretBytes       = 64 << 10
	MaxSecretsTotalBytes = 256 << 10
)

// SecretSourceKind is the service a secret comes from.
type SecretSourceKind string

// Secret sources.
const (
	SecretsManager SecretSourceKind = "secretsmanager"
	SSMParameter   SecretSourceKind = "ssm"
)

// SecretSource is a parsed SecretRef.From.
type SecretSource struct {
	Kind SecretSourceKind
	// ID is the secret's ARN (Secrets Manager) or the parameter's name or
	// ARN (SSM), as the service's API takes it.
	ID string
	// JSONKey, if set, selects one top-level key of a JSON secret
	// (Secrets Manager only).
	JSONKey string
}

var (
	// arn:PARTITION:secretsmanager:REGION:ACCOUNT:secret:NAME[:JSONKEY].
	// NAME's and JSONKEY's lengths are checked beside it: a bounded
	// repetition like {1,512} compiles to 512 copies, ~0.5 MiB of heap
	// every agent process holds from start.
	smARNRE = regexp.MustCompile(`^(arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:([A-Za-z0-9/_+=.@-]+))(?::([A-Za-z0-9_.@/+=-]+))?$`)
	// arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME
	ssmARNRE = regexp.MustCompile(`^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.\-/]+$`)
	// An SSM parameter name: /a/b/c or a plain name.
	ssmNameRE = regexp.MustCompile(`^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$`)

	secretFileNameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	secretPathElemRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
)

// ParseSecretSource parses a secret's From:
//
//	arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf           the secret string
//	arn:aws:secretsmanager:us-east-1:123456789012:secret:db-AbCdEf:password  its JSON key "password"
//	arn:aws:ssm:us-east-1:123456789012:parameter/prod/db/password            an SSM parameter by ARN
//	/prod/db/password                                                        an SSM parameter by name
func ParseSecretSource(from string) (SecretSource, error) {
	switch {
	case len(from) > MaxSecretFromLen:
		return SecretSource{}, fmt.Errorf("must be at most %d characters", MaxSecretFromLen)
	case strings.HasPrefix(from, "arn:") && strings.Contains(from, ":secretsmanager:"):
		m := smARNRE.FindStringSubmatch(from)
		if m == nil || len(m[2]) > 512 || len(m[3]) > 256 {
			return SecretSource{}, fmt.Errorf("must be a Secrets Manager secret ARN like arn:aws:secretsmanager:us-east-1:123456789012:secret:name-AbCdEf, optionally followed by :JSONKEY")
		}
		return SecretSource{Kind: SecretsManager, ID: m[1], JSONKey: m[3]}, nil
	case strings.HasPrefix(from, "arn:"):
		if !ssmARNRE.MatchString(from) {
			return SecretSource{}, fmt.Errorf("must be a Secrets Manager secret ARN, an SSM parameter ARN like arn:aws:ssm:us-east-1:123456789012:parameter/name, or an SSM parameter name")
		}
		return SecretSource{Kind: SSMParameter, ID: from}, nil
	case len(from) > 1011 || !ssmNameRE.MatchString(from) || hasDotElem(from) || strings.HasPrefix(strings.ToLower(strings.TrimPrefix(from, "/")), "aws") || strings.HasPrefix(strings.ToLower(strings.TrimPrefix(from, "/")), "ssm"):
		return SecretSource{}, fmt.Errorf("must be a Secrets Manager secret ARN or an SSM parameter name like /team/app/password (letters, digits, _ . - and /; not starting with aws or ssm)")
	}
	return SecretSource{Kind: SSMParameter, ID: from}, nil
}

func hasDotElem(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == "." || e == ".." {
			return true
		}
	}
	return false
}

// SecretPath is where a file secret is, relative to SecretsMountPath.
func (r SecretRef) SecretPath() string {
	if r.Path != "" {
		return r.Path
	}
	return r.Name
}

// SecretAsOrDefault is how the secret reaches the task.
func (r SecretRef) SecretAsOrDefault() SecretAs {
	if r.As == "" {
		return SecretAsFile
	}
	return r.As
}

// reservedEnvPrefix: variables the agent sets.
const reservedEnvPrefix = "TITUS_"

func (s *Spec) checkSecrets(c *checker) {
	if len(s.Secrets) == 0 {
		return
	}
	if len(s.Secrets) > MaxSecrets {
		c.failf("secrets", "must have at most %d entries, got %d", MaxSecrets, len(s.Secrets))
		return
	}
	if s.IAMRoleARN == "" {
		c.failf("secrets", "are fetched with the task's own IAM role: set iam_role_arn")
	}
	names := map[string]bool{}
	paths := map[string]bool{}
	var files []string
	for i, r := range s.Secrets {
		f := fmt.Sprintf("secrets[%d]", i)
		switch {
		case r.Name == "":
			c.failf(f+".name", "is required")
		case len(r.Name) > MaxSecretNameLen:
			c.failf(f+".name", "must be at most %d characters", MaxSecretNameLen)
		case names[r.Name]:
			c.failf(f+".name", "%q is used twice", r.Name)
		}
		names[r.Name] = true
		if r.From == "" {
			c.failf(f+".from", "is required")
		} else if _, err := ParseSecretSource(r.From); err != nil {
			c.failf(f+".from", "%v", err)
		}
		switch r.SecretAsOrDefault() {
		case SecretAsEnv:
			if r.Name != "" && !envKeyRE.MatchString(r.Name) {
				c.failf(f+".name", "as env, must be an environment variable name matching %s", envKeyRE)
			}
			if strings.HasPrefix(r.Name, reservedEnvPrefix) {
				c.failf(f+".name", "the %s prefix is reserved for the agent's variables", reservedEnvPrefix)
			}
			if _, dup := s.Env[r.Name]; dup {
				c.failf(f+".name", "%q is also in env: a secret must not shadow or be shadowed by a plain variable", r.Name)
			}
			if r.Path != "" {
				c.failf(f+".path", "is for file secrets (as: file)")
			}
		case SecretAsFile:
			if r.Path == "" && r.Name != "" && !secretFileNameRE.MatchString(r.Name) {
				c.failf(f+".name", "as file without a path, must be a file name matching %s", secretFileNameRE)
			}
			p := r.SecretPath()
			if err := checkSecretPath(p); err != nil {
				c.failf(f+".path", "%q %v", trunc(p), err)
				continue
			}
			if paths[p] {
				c.failf(f+".path", "%q is used twice", p)
			}
			paths[p] = true
			files = append(files, p)
		default:
			c.failf(f+".as", "must be env or file, got %q", trunc(string(r.As)))
		}
	}
	// A file cannot also be a directory of another.
	for _, p := range files {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if paths[d] {
				c.failf("secrets", "%q is a file and the directory of %q", d, p)
			}
		}
	}
}

// checkSecretPath allows only a clean relative path below the secrets
// mount: no "..", no absolute path, no empty or dot elements, a short
// character set.
func checkSecretPath(p string) error {
	switch {
	case len(p) > MaxSecretPathLen:
		return fmt.Errorf("must be at most %d characters", MaxSecretPathLen)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("must be relative to %s", SecretsMountPath)
	case path.Clean(p) != p:
		return fmt.Errorf("must be a clean path (no .., ., // or trailing /)")
	}
	elems := strings.Split(p, "/")
	if len(elems) > MaxSecretPathDepth {
		return fmt.Errorf("must be at most %d levels deep", MaxSecretPathDepth)
	}
	for _, e := range elems {
		if e == ".." || e == "." || !secretPathElemRE.MatchString(e) {
			return fmt.Errorf("element %q must match %s and not be . or ..", trunc(e), secretPathElemRE)
		}
	}
	return nil
}
