// Package logarchive reads shipped task logs back from S3 for the
// scheduler's task logs, when the task or its host is gone. Keys are the
// log shipper's (pkg/logship: <prefix>/<app>/<job>/<task>/<stream>.<N>),
// built with its functions, never by hand; the application comes from the
// scheduler's own record of the job, never from the caller.
package logarchive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/containerd/errdefs"

	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
)

// S3 is what the archive needs of an S3 client.
type S3 interface {
	ListObjectsV2(ctx context.Context, in *s3.ListObjectsV2Input, opts ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, opts ...func(*s3.Options)) (*s3.GetObjectOutput, error)
}

// MaxObjects bounds the objects of one task stream a read lists (and so
// the memory of the listing); past it the rest are not read.
const MaxObjects = 10_000

// chunk is the most bytes handed to send at once.
const chunk = 32 << 10

// Archive reads one bucket under one prefix (the agents' logship.prefix).
type Archive struct {
	s3             S3
	bucket, prefix string
}

// New reads task logs from bucket under prefix with c.
func New(c S3, bucket, prefix string) *Archive {
	return &Archive{s3: c, bucket: bucket, prefix: prefix}
}

type object struct {
	key  string
	seq  int
	when time.Time
}

// Source names the objects Read reads for k.
func (a *Archive) Source(k api.LogKey) string {
	return fmt.Sprintf("s3://%s/%s%s.*", a.bucket, logship.TaskPrefix(a.prefix, k.Application, k.JobID, k.TaskID), stream(k))
}

func stream(k api.LogKey) string {
	if k.Stderr {
		return logship.StreamStderr
	}
	return logship.StreamStdout
}

// Read sends the stream's objects of the task, oldest (lowest sequence)
// first, skipping those last written before since.
func (a *Archive) Read(ctx context.Context, k api.LogKey, since time.Time, send func([]byte) error) (string, error) {
	stream := stream(k)
	prefix := logship.TaskPrefix(a.prefix, k.Application, k.JobID, k.TaskID)
	source := a.Source(k)
	var objs []object
	pg := s3.NewListObjectsV2Paginator(a.s3, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(prefix + stream + ".")})
	for pg.HasMorePages() && len(objs) < MaxObjects {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return source, fmt.Errorf("%w: list %s: %w", errdefs.ErrUnavailable, source, err)
		}
		for _, o := range page.Contents {
			s, seq, err := logship.ParseName(aws.ToString(o.Key))
			if err != nil || s != stream {
				continue // not a shipped file of this stream
			}
			objs = append(objs, object{key: aws.ToString(o.Key), seq: seq, when: aws.ToTime(o.LastModified)})
		}
	}
	if len(objs) == 0 {
		return source, fmt.Errorf("%w: no %s of task %s in %s", errdefs.ErrNotFound, stream, k.TaskID, source)
	}
	slices.SortFunc(objs, func(x, y object) int { return x.seq - y.seq })
	buf := make([]byte, chunk)
	for _, o := range objs {
		// An object is uploaded after its file's last write: its time
		// is never before the file's, so since keeps every file it should.
		if !since.IsZero() && o.when.Before(since) {
			continue
		}
		if err := a.copy(ctx, o.key, buf, send); err != nil {
			return source, err
		}
	}
	return source, nil
}

func (a *Archive) copy(ctx context.Context, key string, buf []byte, send func([]byte) error) error {
	out, err := a.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Errorf("%w: get s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, key, err)
	}
	defer out.Body.Close()
	for {
		n, err := io.ReadFull(out.Body, buf)
		if n > 0 {
			if err := send(buf[:n]); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: read s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, key, err)
		}
	}
}
