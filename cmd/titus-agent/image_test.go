package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/titus-agent/titus-agent/api/agent/v1"
)

func TestPrintImages(t *testing.T) {
	now := time.Date(2026, 12, 3, 10, 0, 0, 0, time.UTC)
	var b strings.Builder
	printImages(&b, &agentv1.ListImagesResponse{StoreBytes: 3 << 20, Images: []*agentv1.ImageInfo{
		{Name: "reg/a:1", Digest: "sha256:" + strings.Repeat("ab", 32), SizeBytes: 1536, LastUsed: timestamppb.New(now.Add(-time.Hour)), Pinned: true},
		{Name: "reg/b:1", Digest: "sha256:" + strings.Repeat("cd", 32), SizeBytes: 10, LastUsed: timestamppb.New(now), UsedBy: []string{"t1", "t2"}},
	}}, now)
	want := `IMAGE    DIGEST        SIZE     LAST USED   PINNED  USED BY
reg/a:1  abababababab  1.5 KiB  1h0m0s ago  yes     
reg/b:1  cdcdcdcdcdcd  10 B     0s ago              t1,t2
image store: 3.0 MiB
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
