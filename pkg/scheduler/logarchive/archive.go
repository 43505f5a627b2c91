// Package logarchive reads shipped task logs back from S3 for the
// scheduler's task logs, when the task or its host is gone. Keys are the
// log shipper's (pkg/logship: <prefix>/<app>/<job>/<task>/<stream>.<N>),
// built with its functions, never by hand; the application comes from the
// scheduler's own record of the job, never from the caller, or, for a job
// the scheduler no longer holds, from the bucket's own keys, and only
// among the applications the caller may read.
package logarchive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/containerd/errdefs"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"

	"github.com/titus-agent/titus-agent/pkg/logship"
	"github.com/titus-agent/titus-agent/pkg/scheduler/api"
)

// S3 is what the archive needs of an S3 client.
type S3 interface {
	ListObjectsV2(ctx context.Context, in *s3.ListObjectsV2Input, opts ...func(*s3.Options)) (*s3.ListObjectsV2Output, error)
	GetObject(ctx context.Context, in *s3.GetObjectInput, opts ...func(*s3.Options)) (*s3.GetObjectOutput, error)
	HeadObject(ctx context.Context, in *s3.HeadObjectInput, opts ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

// MaxObjects bounds the objects of one task stream a read lists (and so
// the memory of the listing); past it the rest are not read.
const MaxObjects = 10_000

// MaxApplications bounds the applications a look-up of a job the
// scheduler no longer holds lists in the bucket.
const MaxApplications = 10_000

// probes is how many applications such a look-up asks S3 about at once.
const probes = 8

// Defaults of a follow (WithFollow).
const (
	// DefaultFollowInterval is how often a follow lists the task's objects.
	DefaultFollowInterval = 2 * time.Second
	// DefaultFollowGrace is how long a follow waits, after the task ended
	// (or after the last new object), for the task's final file.
	DefaultFollowGrace = time.Minute
)

// chunk is the most bytes handed to send at once.
const chunk = 32 << 10

// Archive reads one bucket under one prefix (the agents' logship.prefix).
type Archive struct {
	s3             S3
	bucket, prefix string
	interval       time.Duration
	grace          time.Duration
	// sleep waits d or until ctx ends (tests replace it).
	sleep func(ctx context.Context, d time.Duration) error
	now   func() time.Time
}

// New reads task logs from bucket under prefix with c.
func New(c S3, bucket, prefix string) *Archive {
	return &Archive{s3: c, bucket: bucket, prefix: prefix, interval: DefaultFollowInterval, grace: DefaultFollowGrace,
		sleep: sleepCtx, now: time.Now}
}

// WithFollow sets how often a follow lists the task's objects and how
// long it waits for the final file once the task has ended (zero: the
// defaults).
func (a *Archive) WithFollow(interval, grace time.Duration) *Archive {
	if interval > 0 {
		a.interval = interval
	}
	if grace > 0 {
		a.grace = grace
	}
	return a
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
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

// list returns the stream's objects of k, by sequence.
func (a *Archive) list(ctx context.Context, k api.LogKey) ([]object, error) {
	stream := stream(k)
	prefix := logship.TaskPrefix(a.prefix, k.Application, k.JobID, k.TaskID)
	var objs []object
	pg := s3.NewListObjectsV2Paginator(a.s3, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(prefix + stream + ".")})
	for pg.HasMorePages() && len(objs) < MaxObjects {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: list %s: %w", errdefs.ErrUnavailable, a.Source(k), err)
		}
		for _, o := range page.Contents {
			s, seq, err := logship.ParseName(aws.ToString(o.Key))
			if err != nil || s != stream {
				continue // not a shipped file of this stream
			}
			objs = append(objs, object{key: aws.ToString(o.Key), seq: seq, when: aws.ToTime(o.LastModified)})
		}
	}
	slices.SortFunc(objs, func(x, y object) int { return x.seq - y.seq })
	return objs, nil
}

// Read sends the stream's objects of the task, oldest (lowest sequence)
// first, skipping those last written before r.Since. Following, it lists
// the task's objects again every interval and sends the new ones, until
// it has sent the object marked final (logship.MetaFinal), or the task
// has ended and no new object came for the grace period: the returned
// string says which.
func (a *Archive) Read(ctx context.Context, k api.LogKey, r api.ArchiveRead, send func([]byte) error) (string, error) {
	buf := make([]byte, chunk)
	last := -1           // highest sequence sent (or skipped)
	var newest time.Time // when the follow last saw a new object
	for round := 0; ; round++ {
		objs, err := a.list(ctx, k)
		if err != nil {
			return "", err
		}
		if len(objs) == 0 && !r.Follow {
			return "", fmt.Errorf("%w: no %s of task %s in %s", errdefs.ErrNotFound, stream(k), k.TaskID, a.Source(k))
		}
		for _, o := range objs {
			if o.seq <= last {
				continue // sent, or older than what was sent: never out of order
			}
			last = o.seq
			if round > 0 {
				newest = a.now()
			}
			var final bool
			// An object is uploaded after its file's last write: its time
			// is never before the file's, so since keeps every file it should.
			if !r.Since.IsZero() && o.when.Before(r.Since) {
				if r.Follow {
					if final, err = a.final(ctx, o.key); err != nil {
						return "", err
					}
				}
			} else if final, err = a.copy(ctx, o.key, buf, send); err != nil {
				return "", err
			}
			if final && r.Follow {
				return fmt.Sprintf("task %s ended: its final %s is read", k.TaskID, stream(k)), nil
			}
		}
		if !r.Follow {
			return "", nil
		}
		ended, at := true, time.Time{}
		if r.TaskEnded != nil {
			ended, at = r.TaskEnded(ctx)
		}
		if ended {
			quiet := at
			if newest.After(quiet) {
				quiet = newest
			}
			if a.now().Sub(quiet) >= a.grace {
				if last < 0 {
					return "", fmt.Errorf("%w: no %s of task %s in %s, and the task has ended", errdefs.ErrNotFound, stream(k), k.TaskID, a.Source(k))
				}
				return fmt.Sprintf("task %s ended and its final %s did not reach S3 within %s: its host may be gone, "+
					"or the file was not shipped (titus.logs/ship, titus.logs/max-mib); the log above is what was shipped",
					k.TaskID, stream(k), a.grace), nil
			}
		}
		if err := a.sleep(ctx, a.interval); err != nil {
			return "", err
		}
	}
}

// final reports whether key is a task's final file.
func (a *Archive) final(ctx context.Context, key string) (bool, error) {
	out, err := a.s3.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		return false, fmt.Errorf("%w: head s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, key, err)
	}
	return isFinal(out.Metadata), nil
}

func isFinal(m map[string]string) bool {
	for k, v := range m {
		if strings.EqualFold(k, logship.MetaFinal) && v == "true" {
			return true
		}
	}
	return false
}

// copy sends key's bytes, decompressed if the key says it is gzip'd
// (logship.IsGzip), and reports whether it is a task's final file.
func (a *Archive) copy(ctx context.Context, key string, buf []byte, send func([]byte) error) (bool, error) {
	out, err := a.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		return false, fmt.Errorf("%w: get s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, key, err)
	}
	defer out.Body.Close()
	var body io.Reader = out.Body
	if logship.IsGzip(key) {
		zr, err := gzip.NewReader(out.Body)
		if err != nil {
			return false, fmt.Errorf("%w: s3://%s/%s is not gzip: %w", errdefs.ErrDataLoss, a.bucket, key, err)
		}
		defer zr.Close()
		body = zr
	}
	for {
		n, err := io.ReadFull(body, buf)
		if n > 0 {
			if err := send(buf[:n]); err != nil {
				return false, err
			}
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return isFinal(out.Metadata), nil
		}
		if err != nil {
			return false, fmt.Errorf("%w: read s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, key, err)
		}
	}
}

// Applications returns the applications under whose keys the bucket holds
// logs of task taskID of job jobID, among those may accepts. It reads the
// job index first (logship.JobIndexPrefix: one listing): one application
// there that the caller may read is the answer. With none the caller may
// read (the job's logs were shipped before agents wrote the index, or
// they are another tenant's), it scans: the bucket's application segments
// are listed, and only those the caller may read are asked about. Either
// way nothing under an application the caller may not read is listed,
// and the answer, and the work done, are the same for another tenant's
// job as for one that does not exist. Tasks not launched by the scheduler
// (application "_") are never looked at.
func (a *Archive) Applications(ctx context.Context, jobID, taskID string, may func(app string) bool) ([]string, error) {
	apps, err := a.indexed(ctx, jobID, may)
	if err != nil {
		return nil, err
	}
	switch len(apps) {
	case 0:
		return a.scan(ctx, jobID, taskID, may)
	case 1:
		return apps, nil
	}
	// More than one (only hand-made keys do that): the ones that hold the task.
	return a.holding(ctx, jobID, taskID, apps)
}

// indexed returns the applications the job index names for jobID that may
// accepts.
func (a *Archive) indexed(ctx context.Context, jobID string, may func(app string) bool) ([]string, error) {
	prefix := logship.JobIndexPrefix(a.prefix, jobID)
	out, err := a.s3.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(prefix), MaxKeys: aws.Int32(maxIndexed)})
	if err != nil {
		return nil, fmt.Errorf("%w: list the job index s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, prefix, err)
	}
	var apps []string
	for _, o := range out.Contents {
		seg := strings.TrimPrefix(aws.ToString(o.Key), prefix)
		app, err := logship.UnescapeSegment(seg)
		if err != nil || app == "" || !may(app) {
			continue
		}
		apps = append(apps, app)
	}
	slices.Sort(apps)
	return slices.Compact(apps), nil
}

// maxIndexed bounds the job index entries of one job a look-up reads.
const maxIndexed = 100

// scan finds the applications holding the task by listing the bucket's
// application segments and asking about those may accepts.
func (a *Archive) scan(ctx context.Context, jobID, taskID string, may func(app string) bool) ([]string, error) {
	root := ""
	if p := strings.Trim(a.prefix, "/"); p != "" {
		root = p + "/"
	}
	var apps []string
	pg := s3.NewListObjectsV2Paginator(a.s3, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(root), Delimiter: aws.String("/")})
	for pg.HasMorePages() && len(apps) < MaxApplications {
		page, err := pg.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("%w: list the applications of s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, root, err)
		}
		for _, cp := range page.CommonPrefixes {
			seg := strings.TrimSuffix(strings.TrimPrefix(aws.ToString(cp.Prefix), root), "/")
			app, err := logship.UnescapeSegment(seg)
			if err != nil || app == "" || !may(app) {
				continue
			}
			apps = append(apps, app)
		}
	}
	return a.holding(ctx, jobID, taskID, apps)
}

// holding returns those of apps under which the bucket holds anything of
// the task, asking about each (probes at once).
func (a *Archive) holding(ctx context.Context, jobID, taskID string, apps []string) ([]string, error) {
	var mu sync.Mutex
	var found []string
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(probes)
	for _, app := range apps {
		g.Go(func() error {
			prefix := logship.TaskPrefix(a.prefix, app, jobID, taskID)
			out, err := a.s3.ListObjectsV2(gctx, &s3.ListObjectsV2Input{Bucket: aws.String(a.bucket), Prefix: aws.String(prefix), MaxKeys: aws.Int32(1)})
			if err != nil {
				return fmt.Errorf("%w: list s3://%s/%s: %w", errdefs.ErrUnavailable, a.bucket, prefix, err)
			}
			if len(out.Contents) > 0 {
				mu.Lock()
				found = append(found, app)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	slices.Sort(found)
	return found, nil
}
