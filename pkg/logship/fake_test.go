package logship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// fakeS3 is an in-memory bucket that records calls and fails on demand.
type fakeS3 struct {
	mu      sync.Mutex
	objects map[string][]byte
	uploads map[string]map[int32][]byte // upload id → parts
	keys    map[string]string           // upload id → key
	calls   []string
	meta    map[string]map[string]string // key → metadata
	umeta   map[string]map[string]string // upload id → metadata
	// fail, if set, is asked before each call; a non-nil error fails it.
	fail func(op string) error
	n    int
}

func newFakeS3() *fakeS3 {
	return &fakeS3{objects: map[string][]byte{}, uploads: map[string]map[int32][]byte{}, keys: map[string]string{},
		meta: map[string]map[string]string{}, umeta: map[string]map[string]string{}}
}

func (f *fakeS3) call(op, key string) error {
	f.calls = append(f.calls, op+" "+key)
	if f.fail != nil {
		return f.fail(op)
	}
	return nil
}

func (f *fakeS3) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == op || strings.HasPrefix(c, op+" ") { // "put" or "put <key>"
			n++
		}
	}
	return n
}

// list lists the keys of shipped files (not the job index).
func (f *fakeS3) list() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.objects {
		if !strings.Contains(k, jobIndexSegment+"/") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// index lists the job index entries.
func (f *fakeS3) index() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k := range f.objects {
		if strings.Contains(k, jobIndexSegment+"/") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (f *fakeS3) AbortMultipartUpload(ctx context.Context, in *s3.AbortMultipartUploadInput, _ ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("abort", *in.Key); err != nil {
		return nil, err
	}
	if _, ok := f.uploads[*in.UploadId]; !ok {
		return nil, &types.NoSuchUpload{}
	}
	delete(f.uploads, *in.UploadId)
	return &s3.AbortMultipartUploadOutput{}, nil
}

// finals lists the keys whose metadata marks them final.
func (f *fakeS3) finals() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for k, m := range f.meta {
		if m[MetaFinal] == "true" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

func (f *fakeS3) get(k string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return string(f.objects[k])
}

func (f *fakeS3) PutObject(ctx context.Context, in *s3.PutObjectInput, _ ...func(*s3.Options)) (*s3.PutObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("put", *in.Key); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(in.Body)
	if err != nil {
		return nil, err
	}
	if int64(len(b)) != aws.ToInt64(in.ContentLength) {
		return nil, fmt.Errorf("body %d bytes, content length %d", len(b), aws.ToInt64(in.ContentLength))
	}
	f.objects[*in.Key] = b
	f.meta[*in.Key] = in.Metadata
	return &s3.PutObjectOutput{}, nil
}

func (f *fakeS3) HeadObject(ctx context.Context, in *s3.HeadObjectInput, _ ...func(*s3.Options)) (*s3.HeadObjectOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("head", *in.Key); err != nil {
		return nil, err
	}
	b, ok := f.objects[*in.Key]
	if !ok {
		return nil, &types.NotFound{}
	}
	return &s3.HeadObjectOutput{ContentLength: aws.Int64(int64(len(b))), Metadata: f.meta[*in.Key]}, nil
}

func (f *fakeS3) CreateMultipartUpload(ctx context.Context, in *s3.CreateMultipartUploadInput, _ ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("create", *in.Key); err != nil {
		return nil, err
	}
	f.n++
	id := "up-" + strconv.Itoa(f.n)
	f.uploads[id] = map[int32][]byte{}
	f.keys[id] = *in.Key
	f.umeta[id] = in.Metadata
	return &s3.CreateMultipartUploadOutput{UploadId: aws.String(id)}, nil
}

func (f *fakeS3) UploadPart(ctx context.Context, in *s3.UploadPartInput, _ ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("part", *in.Key); err != nil {
		return nil, err
	}
	up, ok := f.uploads[*in.UploadId]
	if !ok {
		return nil, &types.NoSuchUpload{}
	}
	b, err := io.ReadAll(in.Body)
	if err != nil {
		return nil, err
	}
	up[*in.PartNumber] = b
	return &s3.UploadPartOutput{ETag: aws.String(fmt.Sprintf("etag-%d", *in.PartNumber))}, nil
}

func (f *fakeS3) ListParts(ctx context.Context, in *s3.ListPartsInput, _ ...func(*s3.Options)) (*s3.ListPartsOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("listparts", *in.Key); err != nil {
		return nil, err
	}
	up, ok := f.uploads[*in.UploadId]
	if !ok {
		return nil, &types.NoSuchUpload{}
	}
	out := &s3.ListPartsOutput{IsTruncated: aws.Bool(false)}
	for n, b := range up {
		out.Parts = append(out.Parts, types.Part{PartNumber: aws.Int32(n), Size: aws.Int64(int64(len(b))), ETag: aws.String(fmt.Sprintf("etag-%d", n))})
	}
	return out, nil
}

func (f *fakeS3) CompleteMultipartUpload(ctx context.Context, in *s3.CompleteMultipartUploadInput, _ ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("complete", *in.Key); err != nil {
		return nil, err
	}
	up, ok := f.uploads[*in.UploadId]
	if !ok {
		return nil, &types.NoSuchUpload{}
	}
	var buf bytes.Buffer
	for i, p := range in.MultipartUpload.Parts {
		if *p.PartNumber != int32(i+1) {
			return nil, errors.New("parts out of order")
		}
		b, ok := up[*p.PartNumber]
		if !ok {
			return nil, fmt.Errorf("no part %d", *p.PartNumber)
		}
		buf.Write(b)
	}
	f.objects[*in.Key] = buf.Bytes()
	f.meta[*in.Key] = f.umeta[*in.UploadId]
	delete(f.uploads, *in.UploadId)
	return &s3.CompleteMultipartUploadOutput{}, nil
}

// fakeDisk reports a used fraction computed by a function.
type fakeDisk struct{ used func() float64 }

func (d fakeDisk) Usage(string) (uint64, uint64, error) {
	return uint64(d.used() * 1e6), 1e6, nil
}
