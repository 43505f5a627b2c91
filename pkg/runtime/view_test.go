package runtime

import (
	"testing"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/google/go-cmp/cmp"
)

func TestLowerDirs(t *testing.T) {
	tests := []struct {
		name    string
		mounts  []mount.Mount
		want    []string
		wantErr bool
	}{
		{"single layer bind", []mount.Mount{{Type: "bind", Source: "/s/1/fs", Options: []string{"ro", "rbind"}}}, []string{"/s/1/fs"}, false},
		{"overlay", []mount.Mount{{Type: "overlay", Source: "overlay", Options: []string{"index=off", "lowerdir=/s/3/fs:/s/2/fs:/s/1/fs"}}}, []string{"/s/3/fs", "/s/2/fs", "/s/1/fs"}, false},
		{"overlay without lowerdir", []mount.Mount{{Type: "overlay", Options: []string{"upperdir=/u"}}}, nil, true},
		{"none", nil, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := lowerDirs(tt.mounts)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}
