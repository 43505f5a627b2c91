package secrets

import (
	"context"
	"os"
	"path/filepath"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/smithy-go"
)

// fakeAPI answers from a table and records every call with the access key
// it was signed with.
type fakeAPI struct {
	mu     sync.Mutex
	values map[string]string // by ARN or parameter name
	deny   map[string]bool
	calls  []string // "op id keyid"
}

func (f *fakeAPI) get(op string, creds aws.Credentials, id string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, op+" "+id+" "+creds.AccessKeyID)
	if f.deny[id] {
		return nil, &smithy.GenericAPIError{Code: "AccessDeniedException", Message: "not authorized"}
	}
	v, ok := f.values[id]
	if !ok {
		code := "ResourceNotFoundException"
		if op == "ssm" {
			code = "ParameterNotFound"
		}
		return nil, &smithy.GenericAPIError{Code: code}
	}
	return []byte(v), nil
}

func (f *fakeAPI) GetSecretValue(_ context.Context, creds aws.Credentials, arn string) ([]byte, error) {
	return f.get("sm", creds, arn)
}

func (f *fakeAPI) GetParameter(_ context.Context, creds aws.Credentials, name string) ([]byte, error) {
	return f.get("ssm", creds, name)
}

// fakeMounter records mounts; a "mount" is a plain directory.
type fakeMounter struct {
	mounted map[string]bool
	calls   []string
	failOn  string
}

func (m *fakeMounter) Mount(dir string, size int64) error {
	m.calls = append(m.calls, "mount "+dir)
	if m.failOn == "mount" {
		return errFake
	}
	if m.mounted == nil {
		m.mounted = map[string]bool{}
	}
	m.mounted[dir] = true
	return nil
}

func (m *fakeMounter) Unmount(dir string) error {
	m.calls = append(m.calls, "unmount "+dir)
	delete(m.mounted, dir)
	// What was on the tmpfs goes with it.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		os.Chmod(filepath.Join(dir, e.Name()), 0o700)
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return os.Chmod(dir, 0o700)
}

func (m *fakeMounter) Mounted(dir string) (bool, error) { return m.mounted[dir], nil }

var errFake = &smithy.GenericAPIError{Code: "Fake"}
