package logship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/klauspost/compress/gzip"
)

// S3API is the part of S3 the shipper calls (*s3.Client).
type S3API interface {
	PutObject(ctx context.Context, in *s3.PutObjectInput, opts ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	HeadObject(ctx context.Context, in *s3.HeadObjectInput, opts ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
	CreateMultipartUpload(ctx context.Context, in *s3.CreateMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error)
	UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error)
	ListParts(ctx context.Context, in *s3.ListPartsInput, opts ...func(*s3.Options)) (*s3.ListPartsOutput, error)
	CompleteMultipartUpload(ctx context.Context, in *s3.CompleteMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error)
	AbortMultipartUpload(ctx context.Context, in *s3.AbortMultipartUploadInput, opts ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error)
}

// MetaFinal is the user metadata (x-amz-meta-titus-final: true) of the
// object of a task's final file of a stream: readers following a task in
// S3 stop once they have read it. S3 returns metadata names lower-case.
const MetaFinal = "titus-final"

// MetaBytes is the user metadata (x-amz-meta-titus-bytes) of the object
// of a file shipped gzip-compressed: the file's size before compression.
// A resumed agent takes an object with the size it recorded for the
// landed earlier attempt.
const MetaBytes = "titus-bytes"

// metadata is f's object metadata.
func metadata(f *fileRec) map[string]string {
	m := map[string]string{}
	if f.Final {
		m[MetaFinal] = "true"
	}
	if f.Gzip {
		m[MetaBytes] = strconv.FormatInt(f.Size, 10)
	}
	if len(m) == 0 {
		return nil
	}
	return m
}

func contentType(f *fileRec) *string {
	if f.Gzip {
		return aws.String("application/gzip")
	}
	return aws.String("text/plain; charset=utf-8")
}

// landed reports whether out is the object of an earlier attempt to ship
// f (a whole PUT or a completed multipart upload: S3 shows nothing less).
func landed(out *s3.HeadObjectOutput, f *fileRec) bool {
	if !f.Gzip {
		return aws.ToInt64(out.ContentLength) == f.Size
	}
	for k, v := range out.Metadata {
		if strings.EqualFold(k, MetaBytes) {
			return v == strconv.FormatInt(f.Size, 10)
		}
	}
	return false
}

// errGone means the file's bytes are gone from the host: nothing to ship.
var errGone = errors.New("log file gone")

// uploadOne ships f (a copy; the caller records the outcome) and returns
// the bytes sent. save persists f's progress (GzSize, Attempted,
// UploadID) before each call that depends on it, so a resumed agent
// continues instead of starting over.
func (s *Shipper) uploadOne(ctx context.Context, dir string, f *fileRec, save func(*fileRec) error) (int64, error) {
	if f.Attempted {
		// An attempt the agent did not see finish (killed) may have
		// landed: ask before sending it again.
		out, err := s.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: &f.Key})
		switch {
		case err == nil && landed(out, f):
			return aws.ToInt64(out.ContentLength), nil
		case err != nil && !isNotFound(err):
			return 0, fmt.Errorf("head %s: %w", f.Key, err)
		}
	}
	file, fi, err := openLog(dir, f.Name)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errGone
	}
	if err != nil {
		return 0, err
	}
	defer file.Close()
	if fi.Size() < f.Size {
		// Only the final file can change after it is recorded, and only
		// by an outside hand; ship what is there.
		f.Size = fi.Size()
	}
	body, size := file, f.Size
	if f.Gzip {
		gz, err := s.gzipped(ctx, file, f, save)
		switch {
		case err == nil:
			defer gz.Close()
			body, size = gz, f.GzSize
		case f.Attempted || ctx.Err() != nil:
			return 0, err
		default:
			// No room (or no way) to write the compressed copy, and
			// nothing was ever sent under the .gz key: ship the file as
			// it is, under the plain key, rather than hold it back.
			s.log.Warn("cannot compress a log file; shipping it uncompressed", "task", f.Task, "file", f.Name, "err", err)
			f.Gzip, f.GzSize, f.UploadID = false, 0, ""
			f.Key = strings.TrimSuffix(f.Key, GzipSuffix)
			if err := save(f); err != nil {
				return 0, err
			}
		}
	}
	if !f.Attempted {
		f.Attempted = true
		if err := save(f); err != nil {
			return 0, err
		}
	}
	if size < s.cfg.MultipartThreshold {
		_, err := s.api.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.cfg.Bucket, Key: &f.Key, ContentLength: aws.Int64(size),
			Body: io.NewSectionReader(body, 0, size), ContentType: contentType(f),
			Metadata: metadata(f),
		})
		if err != nil {
			return 0, fmt.Errorf("put %s: %w", f.Key, err)
		}
		return size, nil
	}
	return size, s.multipart(ctx, body, size, f, save)
}

// gzPath is where f's compressed copy is made: the task's spool dir.
func (s *Shipper) gzPath(f *fileRec) string {
	return filepath.Join(s.cfg.SpoolDir, f.Task, f.Name+GzipSuffix)
}

// gzipped opens f's compressed copy, made from src unless a copy it may
// trust is there: one of the recorded size (GzSize) that this process
// made, or one synced to disk, which only a copy for a multipart upload
// (MultipartThreshold or more) is, with its size recorded before any part
// is sent: a resumed upload sends the rest of the same bytes. A smaller
// copy is sent whole by one PUT, so after a restart it is just made
// again (no fsync, no state write for it). A new copy voids a multipart
// upload of an earlier one (its parts are of other bytes).
func (s *Shipper) gzipped(ctx context.Context, src *os.File, f *fileRec, save func(*fileRec) error) (*os.File, error) {
	p := s.gzPath(f)
	if f.GzSize > 0 {
		s.mu.Lock()
		trust := f.GzSize >= s.cfg.MultipartThreshold || s.made[p]
		s.mu.Unlock()
		if gz, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0); err == nil {
			if fi, err := gz.Stat(); trust && err == nil && fi.Mode().IsRegular() && fi.Size() == f.GzSize {
				return gz, nil
			}
			gz.Close()
		}
		if f.UploadID != "" {
			_, _ = s.api.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: &f.Key, UploadId: &f.UploadID})
			f.UploadID = ""
		}
		f.GzSize = 0
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return nil, fmt.Errorf("compress %s: %w", f.Name, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("compress %s: %w", f.Name, err)
	}
	defer os.Remove(tmp.Name())
	n, err := compress(tmp, io.NewSectionReader(src, 0, f.Size))
	multipart := n >= s.cfg.MultipartThreshold
	if err == nil && multipart {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), p)
	}
	if err != nil {
		return nil, fmt.Errorf("compress %s: %w", f.Name, err)
	}
	s.mu.Lock()
	s.made[p] = true
	s.mu.Unlock()
	f.GzSize = n
	if multipart {
		if err := save(f); err != nil {
			return nil, err
		}
	}
	gz, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("compress %s: %w", f.Name, err)
	}
	return gz, nil
}

// dropGz deletes f's compressed copy, if any.
func (s *Shipper) dropGz(f *fileRec) {
	p := s.gzPath(f)
	_ = os.Remove(p)
	s.mu.Lock()
	delete(s.made, p)
	s.mu.Unlock()
}

// compress writes r gzip-compressed (at the fastest level: the point is
// fewer bytes for the host to sign and send, at little CPU) to w, and
// returns the compressed size.
func compress(w io.Writer, r io.Reader) (int64, error) {
	cw := &countWriter{w: w}
	zw, err := gzip.NewWriterLevel(cw, gzip.BestSpeed)
	if err != nil {
		return 0, err
	}
	if _, err := io.Copy(zw, r); err != nil {
		return 0, err
	}
	if err := zw.Close(); err != nil {
		return 0, err
	}
	return cw.n, nil
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// multipart uploads the size bytes of file (f's bytes, compressed or
// not) in parts, resuming the upload recorded in f.UploadID with the parts
// S3 already has.
func (s *Shipper) multipart(ctx context.Context, file *os.File, size int64, f *fileRec, save func(*fileRec) error) error {
	have := map[int32]types.Part{}
	if f.UploadID != "" {
		var marker *string
		for {
			out, err := s.api.ListParts(ctx, &s3.ListPartsInput{Bucket: &s.cfg.Bucket, Key: &f.Key, UploadId: &f.UploadID, PartNumberMarker: marker})
			if isNoSuchUpload(err) {
				f.UploadID = "" // expired or aborted: start over
				have = map[int32]types.Part{}
				break
			}
			if err != nil {
				return fmt.Errorf("list parts of %s: %w", f.Key, err)
			}
			for _, p := range out.Parts {
				have[aws.ToInt32(p.PartNumber)] = p
			}
			if !aws.ToBool(out.IsTruncated) {
				break
			}
			marker = out.NextPartNumberMarker
		}
	}
	if f.UploadID == "" {
		out, err := s.api.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: &f.Key,
			ContentType: contentType(f), Metadata: metadata(f)})
		if err != nil {
			return fmt.Errorf("start upload of %s: %w", f.Key, err)
		}
		f.UploadID = aws.ToString(out.UploadId)
		if err := save(f); err != nil {
			return err
		}
	}
	var parts []types.CompletedPart
	n := int32(0)
	for off := int64(0); off < size; off += s.cfg.PartSize {
		n++
		psize := min(s.cfg.PartSize, size-off)
		if p, ok := have[n]; ok && aws.ToInt64(p.Size) == psize {
			parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: p.ETag})
			continue
		}
		out, err := s.api.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.cfg.Bucket, Key: &f.Key, UploadId: &f.UploadID,
			PartNumber: aws.Int32(n), ContentLength: aws.Int64(psize), Body: io.NewSectionReader(file, off, psize)})
		if err != nil {
			return fmt.Errorf("upload part %d of %s: %w", n, f.Key, err)
		}
		parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: out.ETag})
	}
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	_, err := s.api.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &s.cfg.Bucket, Key: &f.Key, UploadId: &f.UploadID,
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
	if err != nil {
		return fmt.Errorf("complete upload of %s: %w", f.Key, err)
	}
	return nil
}

func isNotFound(err error) bool {
	var nf *types.NotFound
	var nk *types.NoSuchKey
	if errors.As(err, &nf) || errors.As(err, &nk) {
		return true
	}
	var ae smithy.APIError
	return errors.As(err, &ae) && (ae.ErrorCode() == "NotFound" || ae.ErrorCode() == "NoSuchKey")
}

func isNoSuchUpload(err error) bool {
	if err == nil {
		return false
	}
	var nu *types.NoSuchUpload
	var ae smithy.APIError
	return errors.As(err, &nu) || (errors.As(err, &ae) && ae.ErrorCode() == "NoSuchUpload")
}
