package configdoc

import (
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

type inner struct {
	Endpoint string `json:"endpoint"`
	Key      string `json:"accessKeyID"`
	Secret   string `json:"secretAccessKey"`
}

type sample struct {
	Socket   string            `json:"socket"`
	Net      inner             `json:"network"`
	Ptr      *inner            `json:"ptr,omitempty"`
	Labels   map[string]string `json:"labels"`
	List     []inner           `json:"list"`
	Wait     time.Duration     `json:"wait"`
	Ignored  string            `json:"-"`
	internal string
}

func TestKeys(t *testing.T) {
	want := []string{"socket", "network.endpoint", "network.accessKeyID", "network.secretAccessKey",
		"ptr.endpoint", "ptr.accessKeyID", "ptr.secretAccessKey", "labels", "list", "wait"}
	if diff := cmp.Diff(want, Keys(sample{})); diff != "" {
		t.Errorf("Keys (-want +got):\n%s", diff)
	}
}

func TestUndocumented(t *testing.T) {
	doc := "| `socket` | x |\n| `network.endpoint` | y |\n| `network.accessKeyID`, `secretAccessKey` | z |\n| `wait` | `labels` too |\n"
	keys := []string{"socket", "network.endpoint", "network.accessKeyID", "network.secretAccessKey", "labels", "list", "ptr.secretAccessKey"}
	if diff := cmp.Diff([]string{"list", "ptr.secretAccessKey"}, Undocumented(doc, keys)); diff != "" {
		t.Errorf("Undocumented (-want +got):\n%s", diff)
	}
}

func TestMissingFrom(t *testing.T) {
	p := t.TempDir() + "/config.md"
	doc := "# A\n\n| `socket` | |\n\n# B\n\n| `network.endpoint` | |\n"
	if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	type small struct {
		Socket string `json:"socket"`
		Net    inner  `json:"network"`
	}
	got, err := MissingFrom(p, "A", small{})
	if diff := cmp.Diff([]string{"network.endpoint", "network.accessKeyID", "network.secretAccessKey"}, got); diff != "" || err != nil {
		t.Errorf("section A (-want +got, err %v):\n%s", err, diff)
	}
	if _, err := MissingFrom(p, "C", small{}); err == nil {
		t.Error("a missing section is not an error")
	}
}
