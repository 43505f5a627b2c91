package ecrauth

import (
	"context"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ecr"
	"github.com/aws/smithy-go/middleware"
)

// AWSConfig says how the agent reaches ECR with its own credentials.
type AWSConfig struct {
	// Endpoint overrides ECR's endpoint (moto in tests).
	Endpoint string
	// AccessKeyID and SecretAccessKey are static credentials; empty: the
	// SDK's default chain (the instance role).
	AccessKeyID, SecretAccessKey string
	// APIOptions are added to every call (metrics).
	APIOptions []func(*middleware.Stack) error
}

// Clients returns a Config.Client making one ECR client per region.
func Clients(ctx context.Context, c AWSConfig) (func(region string) API, error) {
	opts := []func(*config.LoadOptions) error{config.WithAPIOptions(c.APIOptions)}
	if c.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")))
	}
	base, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, err
	}
	var mu sync.Mutex
	clients := map[string]*ecr.Client{}
	return func(region string) API {
		mu.Lock()
		defer mu.Unlock()
		if cl, ok := clients[region]; ok {
			return cl
		}
		cl := ecr.NewFromConfig(base, func(o *ecr.Options) {
			o.Region = region
			if c.Endpoint != "" {
				o.BaseEndpoint = aws.String(c.Endpoint)
			}
		})
		clients[region] = cl
		return cl
	}, nil
}
