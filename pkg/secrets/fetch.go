package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"

	"github.com/titus-agent/titus-agent/pkg/task"
)

// API is the two AWS calls secrets are fetched with, each signed with the
// credentials it is given (the task's role session), never others.
type API interface {
	// GetSecretValue returns a Secrets Manager secret's SecretString (or
	// SecretBinary).
	GetSecretValue(ctx context.Context, creds aws.Credentials, arn string) ([]byte, error)
	// GetParameter returns an SSM parameter's value, decrypted.
	GetParameter(ctx context.Context, creds aws.Credentials, name string) ([]byte, error)
}

// Value is one fetched secret.
type Value struct {
	Ref  task.SecretRef
	Data []byte
}

// Error codes of an UnavailableError besides the services' own
// (AccessDenied, ResourceNotFound, ParameterNotFound, ...).
const (
	CodeNoSuchJSONKey = "NoSuchJSONKey"
	CodeNotJSON       = "NotJSON"
	CodeTooLarge      = "TooLarge"
	CodeInvalidValue  = "InvalidValue"
	CodeNoCredentials = "NoCredentials"
	CodeInvalidSource = "InvalidSource"
)

// UnavailableError says why one secret could not be had. Its message names
// the code and the reference, never a value.
type UnavailableError struct {
	Code string
	From string
	Err  error
}

func (e *UnavailableError) Error() string { return e.Code + " for " + e.From }
func (e *UnavailableError) Unwrap() error { return e.Err }

// maxParallel bounds one task's concurrent fetches.
const maxParallel = 8

// Fetch gets every secret of refs with creds, in parallel, and checks each
// value against the spec's limits. Any failure fails it all: the first
// error (in refs' order) is returned, wrapping *UnavailableError, and no
// value.
func Fetch(ctx context.Context, api API, creds aws.Credentials, refs []task.SecretRef) ([]Value, error) {
	out := make([]Value, len(refs))
	errs := make([]error, len(refs))
	sem := make(chan struct{}, maxParallel)
	var wg sync.WaitGroup
	for i, r := range refs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			data, err := fetchOne(ctx, api, creds, r)
			out[i], errs[i] = Value{Ref: r, Data: data}, err
		}()
	}
	wg.Wait()
	total := 0
	for i, err := range errs {
		if err != nil {
			return nil, err
		}
		total += len(out[i].Data)
	}
	if total > task.MaxSecretsTotalBytes {
		return nil, &UnavailableError{Code: CodeTooLarge, From: "all secrets",
			Err: fmt.Errorf("%d bytes together, more than %d", total, task.MaxSecretsTotalBytes)}
	}
	return out, nil
}

func fetchOne(ctx context.Context, api API, creds aws.Credentials, r task.SecretRef) ([]byte, error) {
	unavailable := func(code string, err error) error { return &UnavailableError{Code: code, From: r.From, Err: err} }
	src, err := task.ParseSecretSource(r.From)
	if err != nil {
		return nil, unavailable(CodeInvalidSource, err)
	}
	var data []byte
	switch src.Kind {
	case task.SecretsManager:
		data, err = api.GetSecretValue(ctx, creds, src.ID)
	case task.SSMParameter:
		data, err = api.GetParameter(ctx, creds, src.ID)
	default:
		err = fmt.Errorf("unknown source kind %q", src.Kind)
	}
	if err != nil {
		return nil, unavailable(errorCode(err), err)
	}
	if src.JSONKey != "" {
		if data, err = jsonKey(data, src.JSONKey); err != nil {
			var ue *UnavailableError
			if errors.As(err, &ue) {
				ue.From = r.From
				return nil, ue
			}
			return nil, err
		}
	}
	limit := task.MaxSecretBytes
	if r.SecretAsOrDefault() == task.SecretAsEnv {
		limit = min(limit, task.MaxEnvValueLen)
		if strings.IndexByte(string(data), 0) >= 0 {
			return nil, unavailable(CodeInvalidValue, errors.New("an environment variable cannot hold a NUL byte"))
		}
	}
	if len(data) > limit {
		return nil, unavailable(CodeTooLarge, fmt.Errorf("%d bytes, more than %d", len(data), limit))
	}
	return data, nil
}

// jsonKey takes one top-level key of a JSON object: a string as is, any
// other value as its JSON.
func jsonKey(data []byte, key string) ([]byte, error) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(data, &obj); err != nil {
		// The error of encoding/json may quote the input: keep it out.
		return nil, &UnavailableError{Code: CodeNotJSON, Err: errors.New("the secret is not a JSON object")}
	}
	raw, ok := obj[key]
	if !ok {
		return nil, &UnavailableError{Code: CodeNoSuchJSONKey, Err: fmt.Errorf("the secret has no key %q", key)}
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return []byte(s), nil
	}
	return raw, nil
}

// errorCode is the AWS error code of err without its "Exception" suffix
// (AccessDeniedException → AccessDenied), or a code of ours.
func errorCode(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) && ae.ErrorCode() != "" {
		return strings.TrimSuffix(ae.ErrorCode(), "Exception")
	}
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return ue.Code
	}
	// An answer without a code the SDK could read (moto's IAM refusals
	// are XML to JSON services): its HTTP status.
	var re *smithyhttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case 401, 403:
			return "AccessDenied"
		case 404:
			return "ResourceNotFound"
		case 429:
			return "Throttling"
		}
		return fmt.Sprintf("HTTP%d", re.HTTPStatusCode())
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return "Timeout"
	}
	return "RequestFailed"
}
