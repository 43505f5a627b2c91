package logship

import (
	"context"
	"fmt"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go/middleware"
)

// AWSConfig says how the shipper reaches S3.
type AWSConfig struct {
	Region string
	// Endpoint overrides the S3 and STS endpoints (moto in tests); it
	// implies path-style addressing.
	Endpoint string
	// AccessKeyID and SecretAccessKey are static host credentials; empty:
	// the SDK's default chain (the instance profile on EC2).
	AccessKeyID, SecretAccessKey string
	// RoleARN, if set, is assumed (with the host's credentials) for the
	// uploads.
	RoleARN string
	// APIOptions are added to every call (metrics).
	APIOptions []func(*middleware.Stack) error
}

// NewS3 makes the S3 client the shipper uploads with.
func NewS3(ctx context.Context, c AWSConfig) (*s3.Client, error) {
	if c.Region == "" {
		c.Region = "us-east-1"
	}
	opts := []func(*config.LoadOptions) error{config.WithRegion(c.Region)}
	if c.AccessKeyID != "" {
		opts = append(opts, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(c.AccessKeyID, c.SecretAccessKey, "")))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("logship: aws config: %w", err)
	}
	cfg.APIOptions = append(cfg.APIOptions, c.APIOptions...)
	if c.RoleARN != "" {
		stc := sts.NewFromConfig(cfg, func(o *sts.Options) {
			if c.Endpoint != "" {
				o.BaseEndpoint = aws.String(c.Endpoint)
			}
		})
		cfg.Credentials = aws.NewCredentialsCache(stscreds.NewAssumeRoleProvider(stc, c.RoleARN, func(o *stscreds.AssumeRoleOptions) {
			o.RoleSessionName = "titus-logship"
		}))
	}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
			o.UsePathStyle = true
		}
		// Bodies are sections of files, signed as they are; no extra
		// trailing checksums (not every S3 stand-in takes them).
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
	}), nil
}
