package metrics

import (
	"context"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/smithy-go/middleware"
)

var throttles = retry.IsErrorThrottles(retry.DefaultThrottles)

// AWSAPIOptions counts every AWS API attempt (retries included) and every
// throttled attempt in AWSCalls and AWSThrottles. Use it with any SDK
// client: config.WithAPIOptions(a.AWSAPIOptions()) or in the client's
// Options.APIOptions.
func (a *Agent) AWSAPIOptions() []func(*middleware.Stack) error {
	return []func(*middleware.Stack) error{a.addAWSMiddleware}
}

func (a *Agent) addAWSMiddleware(stack *middleware.Stack) error {
	mw := middleware.FinalizeMiddlewareFunc("TitusMetrics", func(ctx context.Context, in middleware.FinalizeInput, next middleware.FinalizeHandler) (middleware.FinalizeOutput, middleware.Metadata, error) {
		out, md, err := next.HandleFinalize(ctx, in)
		service, op := awsmiddleware.GetServiceID(ctx), awsmiddleware.GetOperationName(ctx)
		outcome := "ok"
		switch {
		case err == nil:
		case throttles.IsErrorThrottle(err) == aws.TrueTernary:
			outcome = "throttled"
			a.AWSThrottles.WithLabelValues(service, op).Inc()
		default:
			outcome = "error"
		}
		a.AWSCalls.WithLabelValues(service, op, outcome).Inc()
		return out, md, err
	})
	// After the retryer, so each attempt counts; a stack without a
	// retryer counts each call.
	if err := stack.Finalize.Insert(mw, "Retry", middleware.After); err == nil {
		return nil
	}
	return stack.Finalize.Add(mw, middleware.After)
}
