package logging

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-systemd/v22/journal"
	"github.com/google/go-cmp/cmp"
)

type entry struct {
	Msg  string
	Pri  journal.Priority
	Vars map[string]string
}

// fakeJournal records what would have been sent.
type fakeJournal struct {
	got  []entry
	fail error
}

func (f *fakeJournal) send(msg string, p journal.Priority, vars map[string]string) error {
	f.got = append(f.got, entry{msg, p, vars})
	return f.fail
}

func TestJournalHandler(t *testing.T) {
	f := &fakeJournal{}
	log := slog.New(NewJournalHandler(f.send, slog.LevelInfo))
	log.Debug("not sent")
	log.Info("task started", "task", "web-1", "pid", 42)
	log.With("component", "vpc").WithGroup("eni").Warn("slow", "id", "eni-1", slog.Group("ip", "v4", "198.18.0.5"))
	log.Error("boom", "MESSAGE", "spoof", "priority", "0", "_PID", "1", "err", errors.New("no route"), "1st", "x", "a-b.c", "y")
	want := []entry{
		{"task started", journal.PriInfo, map[string]string{"TASK": "web-1", "PID": "42"}},
		{"slow", journal.PriWarning, map[string]string{"COMPONENT": "vpc", "ENI_ID": "eni-1", "ENI_IP_V4": "198.18.0.5"}},
		{"boom", journal.PriErr, map[string]string{
			"ATTR_MESSAGE": "spoof", "ATTR_PRIORITY": "0", "PID": "1", "ERR": "no route", "ATTR_1ST": "x", "A_B_C": "y",
		}},
	}
	if diff := cmp.Diff(want, f.got); diff != "" {
		t.Errorf("journal entries (-want +got):\n%s", diff)
	}
}

func TestJournalHandlerReportsSendErrors(t *testing.T) {
	f := &fakeJournal{fail: errors.New("journal gone")}
	h := NewJournalHandler(f.send, slog.LevelInfo)
	if err := h.Handle(t.Context(), slog.NewRecord(time.Now(), slog.LevelInfo, "x", 0)); err == nil {
		t.Error("a failed send was not reported")
	}
}

func TestFieldName(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"task", "TASK"},
		{"taskID", "TASKID"},
		{"a.b-c d", "A_B_C_D"},
		{"__x", "X"},
		{"9lives", "ATTR_9LIVES"},
		{"MESSAGE", "ATTR_MESSAGE"},
		{"code_file", "ATTR_CODE_FILE"},
		{"syslog_identifier", "ATTR_SYSLOG_IDENTIFIER"},
		{"___", ""},
		{strings.Repeat("k", 100), strings.Repeat("K", 64)},
	} {
		if got := FieldName(tt.in); got != tt.want {
			t.Errorf("FieldName(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNewWritesTextOutsideTheJournal(t *testing.T) {
	t.Setenv("JOURNAL_STREAM", "")
	var b bytes.Buffer
	New(&b, slog.LevelInfo).Info("hello", "task", "t1")
	if !strings.Contains(b.String(), "msg=hello task=t1") {
		t.Errorf("stderr log = %q", b.String())
	}
}
