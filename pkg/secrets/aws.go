package secrets

import (
	"context"
	"fmt"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	"github.com/aws/aws-sdk-go-v2/service/ssm"
	"github.com/aws/smithy-go/middleware"
)

// AWSConfig configures the real API.
type AWSConfig struct {
	// Region is used where a reference has none (an SSM parameter name);
	// an ARN's own region wins.
	Region string
	// Endpoint overrides both services' endpoint (moto in tests).
	Endpoint string
	// APIOptions are added to every call (metrics).
	APIOptions []func(*middleware.Stack) error
}

// AWS is API on aws-sdk-go-v2. It has no credentials of its own: each call
// is signed with the credentials passed to it.
type AWS struct {
	sm  *secretsmanager.Client
	ssm *ssm.Client
	cfg AWSConfig
}

// NewAWS makes the real API.
func NewAWS(cfg AWSConfig) *AWS {
	if cfg.Region == "" {
		cfg.Region = "us-east-1"
	}
	a := &AWS{cfg: cfg}
	smo := secretsmanager.Options{Region: cfg.Region, Credentials: noCredentials{}}
	sso := ssm.Options{Region: cfg.Region, Credentials: noCredentials{}}
	if cfg.Endpoint != "" {
		smo.BaseEndpoint = aws.String(cfg.Endpoint)
		sso.BaseEndpoint = aws.String(cfg.Endpoint)
	}
	smo.APIOptions = append(smo.APIOptions, cfg.APIOptions...)
	sso.APIOptions = append(sso.APIOptions, cfg.APIOptions...)
	a.sm, a.ssm = secretsmanager.New(smo), ssm.New(sso)
	return a
}

// noCredentials is what a call without the task's credentials would sign
// with: nothing, so it fails instead of falling back to the host's.
type noCredentials struct{}

func (noCredentials) Retrieve(context.Context) (aws.Credentials, error) {
	return aws.Credentials{}, fmt.Errorf("secrets: no task credentials given")
}

func static(creds aws.Credentials) aws.CredentialsProvider {
	return aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) { return creds, nil })
}

// arnRegion is an ARN's region, or "".
func arnRegion(arn string) string {
	parts := strings.SplitN(arn, ":", 5)
	if len(parts) < 5 || parts[0] != "arn" {
		return ""
	}
	return parts[3]
}

func (a *AWS) GetSecretValue(ctx context.Context, creds aws.Credentials, arn string) ([]byte, error) {
	out, err := a.sm.GetSecretValue(ctx, &secretsmanager.GetSecretValueInput{SecretId: aws.String(arn)}, func(o *secretsmanager.Options) {
		o.Credentials = static(creds)
		if r := arnRegion(arn); r != "" {
			o.Region = r
		}
	})
	if err != nil {
		return nil, err
	}
	if out.SecretString != nil {
		return []byte(*out.SecretString), nil
	}
	return out.SecretBinary, nil
}

func (a *AWS) GetParameter(ctx context.Context, creds aws.Credentials, name string) ([]byte, error) {
	out, err := a.ssm.GetParameter(ctx, &ssm.GetParameterInput{Name: aws.String(name), WithDecryption: aws.Bool(true)}, func(o *ssm.Options) {
		o.Credentials = static(creds)
		if r := arnRegion(name); r != "" {
			o.Region = r
		}
	})
	if err != nil {
		return nil, err
	}
	if out.Parameter == nil || out.Parameter.Value == nil {
		return nil, fmt.Errorf("ssm: parameter %s has no value", name)
	}
	return []byte(*out.Parameter.Value), nil
}
