package logship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
)

// S3API is the part of S3 the shipper calls (*s3.Client).
type S3API interface {
	PutObject(ctx context.Context, in *s3.PutObjectInput, opts ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	HeadObject(ctx context.Context, in *s3.HeadObjectInput, opts ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
	CreateMultipartUpload(ctx context.Context, in *s3.CreateMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error)
	UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error)
	ListParts(ctx context.Context, in *s3.ListPartsInput, opts ...func(*s3.Options)) (*s3.ListPartsOutput, error)
	CompleteMultipartUpload(ctx context.Context, in *s3.CompleteMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error)
}

// MetaFinal is the user metadata (x-amz-meta-titus-final: true) of the
// object of a task's final file of a stream: readers following a task in
// S3 stop once they have read it. S3 returns metadata names lower-case.
const MetaFinal = "titus-final"

// metadata is f's object metadata.
func metadata(f *fileRec) map[string]string {
	if f.Final {
		return map[string]string{MetaFinal: "true"}
	}
	return nil
}

// errGone means the file's bytes are gone from the host: nothing to ship.
var errGone = errors.New("log file gone")

// uploadOne ships f (a copy; the caller records the outcome). save
// persists f's progress (Attempted, UploadID) before each call that
// depends on it, so a resumed agent continues instead of starting over.
func (s *Shipper) uploadOne(ctx context.Context, dir string, f *fileRec, save func(*fileRec) error) error {
	if f.Attempted {
		// An attempt the agent did not see finish (killed) may have
		// landed: ask before sending it again.
		out, err := s.api.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.cfg.Bucket, Key: &f.Key})
		switch {
		case err == nil && aws.ToInt64(out.ContentLength) == f.Size:
			return nil
		case err != nil && !isNotFound(err):
			return fmt.Errorf("head %s: %w", f.Key, err)
		}
	}
	file, fi, err := openLog(dir, f.Name)
	if errors.Is(err, os.ErrNotExist) {
		return errGone
	}
	if err != nil {
		return err
	}
	defer file.Close()
	if fi.Size() < f.Size {
		// Only the final file can change after it is recorded, and only
		// by an outside hand; ship what is there.
		f.Size = fi.Size()
	}
	if !f.Attempted {
		f.Attempted = true
		if err := save(f); err != nil {
			return err
		}
	}
	if f.Size < s.cfg.MultipartThreshold {
		_, err := s.api.PutObject(ctx, &s3.PutObjectInput{
			Bucket: &s.cfg.Bucket, Key: &f.Key, ContentLength: aws.Int64(f.Size),
			Body: io.NewSectionReader(file, 0, f.Size), ContentType: aws.String("text/plain; charset=utf-8"),
			Metadata: metadata(f),
		})
		if err != nil {
			return fmt.Errorf("put %s: %w", f.Key, err)
		}
		return nil
	}
	return s.multipart(ctx, file, f, save)
}

// multipart uploads f in parts, resuming the upload recorded in
// f.UploadID with the parts S3 already has.
func (s *Shipper) multipart(ctx context.Context, file *os.File, f *fileRec, save func(*fileRec) error) error {
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
			ContentType: aws.String("text/plain; charset=utf-8"), Metadata: metadata(f)})
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
	for off := int64(0); off < f.Size; off += s.cfg.PartSize {
		n++
		size := min(s.cfg.PartSize, f.Size-off)
		if p, ok := have[n]; ok && aws.ToInt64(p.Size) == size {
			parts = append(parts, types.CompletedPart{PartNumber: aws.Int32(n), ETag: p.ETag})
			continue
		}
		out, err := s.api.UploadPart(ctx, &s3.UploadPartInput{Bucket: &s.cfg.Bucket, Key: &f.Key, UploadId: &f.UploadID,
			PartNumber: aws.Int32(n), ContentLength: aws.Int64(size), Body: io.NewSectionReader(file, off, size)})
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
