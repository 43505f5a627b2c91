// Package logging makes the daemons' loggers: structured records straight to
// the systemd journal (with their attributes as journal fields, searchable
// with `journalctl TASK_ID=...`) when stderr is connected to journald, and
// text lines on stderr otherwise.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/journal"
)

// New returns the logger for a daemon at level, writing to the journal when
// stderr is a journal stream (as under systemd) and to stderr otherwise.
func New(stderr io.Writer, level slog.Level) *slog.Logger {
	if ok, err := journal.StderrIsJournalStream(); err == nil && ok && journal.Enabled() {
		return slog.New(NewJournalHandler(journal.Send, level))
	}
	return slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
}

// SendFunc sends one journal entry (journal.Send in production).
type SendFunc func(message string, priority journal.Priority, vars map[string]string) error

// JournalHandler is a slog.Handler that sends each record as one journal
// entry: the message as MESSAGE, the level as PRIORITY, every attribute as
// a field named in upper case (groups joined with "_"), e.g. task=abc →
// TASK=abc.
type JournalHandler struct {
	send   SendFunc
	level  slog.Leveler
	attrs  []slog.Attr // already prefixed
	prefix string
	mu     *sync.Mutex
}

// NewJournalHandler returns a handler sending records at or above level.
func NewJournalHandler(send SendFunc, level slog.Leveler) *JournalHandler {
	return &JournalHandler{send: send, level: level, mu: &sync.Mutex{}}
}

func (h *JournalHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= h.level.Level()
}

func (h *JournalHandler) Handle(_ context.Context, r slog.Record) error {
	vars := map[string]string{}
	for _, a := range h.attrs {
		addField(vars, "", a)
	}
	r.Attrs(func(a slog.Attr) bool {
		addField(vars, h.prefix, a)
		return true
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.send(r.Message, priority(r.Level), vars)
}

func (h *JournalHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(c.attrs[:len(c.attrs):len(c.attrs)], prefixed(h.prefix, attrs)...)
	return &c
}

func (h *JournalHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := *h
	c.prefix = h.prefix + name + "_"
	return &c
}

func prefixed(prefix string, attrs []slog.Attr) []slog.Attr {
	out := make([]slog.Attr, 0, len(attrs))
	for _, a := range attrs {
		out = append(out, slog.Attr{Key: prefix + a.Key, Value: a.Value})
	}
	return out
}

// addField adds a (flattening groups) under a valid journal field name.
func addField(vars map[string]string, prefix string, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() == slog.KindGroup {
		p := prefix
		if a.Key != "" {
			p += a.Key + "_"
		}
		for _, g := range v.Group() {
			addField(vars, p, g)
		}
		return
	}
	if a.Key == "" {
		return
	}
	name := FieldName(prefix + a.Key)
	if name == "" {
		return
	}
	if _, dup := vars[name]; dup {
		name += "_"
	}
	vars[name] = fmt.Sprint(v.Any())
}

// FieldName maps an attribute key to a journal field name: upper case,
// only [A-Z0-9_], not starting with "_" or a digit (those are reserved or
// invalid), at most 64 characters. Keys of the journal's own fields
// (MESSAGE, PRIORITY) get a prefix so a record cannot overwrite them.
func FieldName(key string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper(key) {
		switch {
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	s := strings.TrimLeft(b.String(), "_")
	if s == "" {
		return ""
	}
	if s[0] >= '0' && s[0] <= '9' || s == "MESSAGE" || s == "PRIORITY" || strings.HasPrefix(s, "SYSLOG_") || strings.HasPrefix(s, "CODE_") {
		s = "ATTR_" + s
	}
	if len(s) > 64 {
		s = s[:64]
	}
	return s
}

func priority(l slog.Level) journal.Priority {
	switch {
	case l >= slog.LevelError:
		return journal.PriErr
	case l >= slog.LevelWarn:
		return journal.PriWarning
	case l >= slog.LevelInfo:
		return journal.PriInfo
	default:
		return journal.PriDebug
	}
}
