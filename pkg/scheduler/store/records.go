package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedv1 "github.com/titus-agent/titus-agent/api/scheduler/v1"
	"github.com/titus-agent/titus-agent/pkg/scheduler/model"
	"github.com/titus-agent/titus-agent/pkg/scheduler/wire"
	"github.com/titus-agent/titus-agent/pkg/task"
)

// Records are the API's protos (package wire converts), so that what an
// earlier version wrote still loads.

func marshal(m proto.Message) []byte {
	b, _ := proto.Marshal(m)
	return b
}

// PutJob writes a job record now (fenced), within 10 seconds.
func (s *Store) PutJob(ctx context.Context, j *model.Job) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return s.txn(ctx, []put{{key: s.jobKey(j.ID), val: marshal(wire.JobToProto(j))}})
}

// CreateTasks writes new task attempts; each key must not exist yet.
func (s *Store) CreateTasks(ctx context.Context, ts []*model.Task) error {
	puts := make([]put, len(ts))
	for i, t := range ts {
		puts[i] = put{key: s.taskKey(t.JobID, t.ID), val: marshal(wire.TaskToProto(t)), create: true}
	}
	return s.commit(ctx, puts)
}

// SaveJob queues a job record for the next Flush (encoded now).
func (s *Store) SaveJob(j *model.Job) { s.later.set(s.jobKey(j.ID), marshal(wire.JobToProto(j))) }

// SaveTask queues a task record for the next Flush (encoded now).
func (s *Store) SaveTask(t *model.Task) {
	s.later.set(s.taskKey(t.JobID, t.ID), marshal(wire.TaskToProto(t)))
}

// SaveAgent queues an agent's record (registration and drain state) for the next Flush.
func (s *Store) SaveAgent(a *model.Agent) {
	s.later.set(s.agentKey(a.ID), marshal(wire.AgentRecordToProto(a)))
}

// Flush writes what the Save calls queued. After a failure other than
// ErrNotLeader (and while ctx lives) the records are queued again, unless
// a newer one was queued meanwhile.
func (s *Store) Flush(ctx context.Context) error {
	puts := s.later.take()
	if len(puts) == 0 {
		return nil
	}
	err := s.commit(ctx, puts)
	if err != nil && !errors.Is(err, ErrNotLeader) && ctx.Err() == nil {
		for _, p := range puts {
			s.later.setIfAbsent(p.key, p.val)
		}
	}
	return err
}

// Delete removes jobs' records with every attempt of their tasks, and
// agents' records, fenced.
func (s *Store) Delete(ctx context.Context, jobIDs, agentIDs []string) error {
	return s.deleteJobs(ctx, jobIDs, agentIDs)
}

// Agents reads every agent record. A record that cannot be read is
// skipped and quarantined (see quarantine).
func (s *Store) Agents(ctx context.Context) ([]*model.Agent, error) {
	var out []*model.Agent
	prefix := s.prefix + "agents/"
	err := s.getPrefixRev(ctx, prefix, func(key string, v []byte, rev int64) error {
		r := &schedv1.Agent{}
		err := proto.Unmarshal(v, r)
		if err == nil && r.GetId() != strings.TrimPrefix(key, prefix) {
			err = fmt.Errorf("record names agent %q", r.GetId())
		}
		if err != nil {
			return s.quarantine(ctx, key, v, rev, err)
		}
		out = append(out, wire.AgentFromProto(r))
		return nil
	})
	return out, err
}

// Jobs reads every job record. A record that cannot be read is skipped
// and quarantined (see quarantine): one bad key must not keep every
// replica from leading.
func (s *Store) Jobs(ctx context.Context) ([]*model.Job, error) {
	var out []*model.Job
	prefix := s.prefix + "jobs/"
	err := s.getPrefixRev(ctx, prefix, func(key string, v []byte, rev int64) error {
		r := &schedv1.Job{}
		err := proto.Unmarshal(v, r)
		if err == nil && r.GetId() != strings.TrimPrefix(key, prefix) {
			err = fmt.Errorf("record names job %q", r.GetId())
		}
		if err != nil {
			return s.quarantine(ctx, key, v, rev, err)
		}
		out = append(out, wire.JobFromProto(r))
		return nil
	})
	return out, err
}

// JobTasks reads every attempt of a job's tasks, in key order. An attempt
// whose record cannot be read is quarantined and stands as a lost attempt
// (named by its key), so the slot's next attempt gets a fresh id.
func (s *Store) JobTasks(ctx context.Context, jobID string) ([]*model.Task, error) {
	var out []*model.Task
	prefix := s.jobTasksPrefix(jobID)
	err := s.getPrefixRev(ctx, prefix, func(key string, v []byte, rev int64) error {
		t := &schedv1.Task{}
		id := strings.TrimPrefix(key, prefix)
		err := proto.Unmarshal(v, t)
		if err == nil && (t.GetId() != id || t.GetJobId() != jobID) {
			err = fmt.Errorf("record names task %q of job %q", t.GetId(), t.GetJobId())
		}
		if err != nil {
			if qerr := s.quarantine(ctx, key, v, rev, err); qerr != nil {
				return qerr
			}
			if p, ok := unreadableTask(jobID, id, err); ok {
				out = append(out, p)
			}
			return nil
		}
		out = append(out, wire.TaskFromProto(t))
		return nil
	})
	return out, err
}

// unreadableTask stands for an attempt whose record cannot be read: lost,
// with the index and attempt its key names (false if the key names none).
func unreadableTask(jobID, id string, err error) (*model.Task, bool) {
	rest, ok := strings.CutPrefix(id, jobID+".")
	if !ok {
		return nil, false
	}
	is, as, ok := strings.Cut(rest, ".")
	idx, err1 := strconv.ParseUint(is, 10, 32)
	att, err2 := strconv.ParseUint(as, 10, 32)
	if !ok || err1 != nil || err2 != nil || model.TaskID(jobID, uint32(idx), uint32(att)) != id {
		return nil, false
	}
	now := time.Now()
	return &model.Task{ID: id, JobID: jobID, Index: uint32(idx), Attempt: uint32(att), State: task.Lost,
		Reason: "RecordUnreadable", Message: "the scheduler could not read this attempt's record (quarantined): " + err.Error(),
		Placed: now, Ended: now}, true
}

// Task reads one task attempt (nil if absent or id names no job).
func (s *Store) Task(ctx context.Context, id string) (*model.Task, error) {
	jobID, _, ok := strings.Cut(id, ".")
	if !ok {
		return nil, nil
	}
	v, err := s.get(ctx, s.taskKey(jobID, id))
	if err != nil || v == nil {
		return nil, err
	}
	t := &schedv1.Task{}
	if err := proto.Unmarshal(v, t); err != nil {
		return nil, fmt.Errorf("task %s: %w", id, err)
	}
	return wire.TaskFromProto(t), nil
}

func (s *Store) idempotencyKey(k *model.IdempotencyKey) string {
	return s.prefix + "idempotency/" + k.Scope + "/" + k.Key
}

// PutJobWithKey writes a job record and its submit's idempotency key in
// one fenced transaction (both or neither), within 10 seconds. Writing the
// same record again is harmless: a retry after a timeout whose write did
// commit leaves one job.
func (s *Store) PutJobWithKey(ctx context.Context, j *model.Job, k *model.IdempotencyKey) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rec := &schedv1.IdempotencyRecord{JobId: k.JobID, SpecSha256: k.SpecDigest, Expires: timestamppb.New(k.Expires)}
	return s.txn(ctx, []put{{key: s.jobKey(j.ID), val: marshal(wire.JobToProto(j))}, {key: s.idempotencyKey(k), val: marshal(rec)}})
}

// IdempotencyKeys reads every stored idempotency key (expired ones too:
// the caller drops them). A record that cannot be read is quarantined.
func (s *Store) IdempotencyKeys(ctx context.Context) ([]*model.IdempotencyKey, error) {
	var out []*model.IdempotencyKey
	prefix := s.prefix + "idempotency/"
	err := s.getPrefixRev(ctx, prefix, func(key string, v []byte, rev int64) error {
		r := &schedv1.IdempotencyRecord{}
		err := proto.Unmarshal(v, r)
		scope, k, ok := strings.Cut(strings.TrimPrefix(key, prefix), "/")
		if err == nil && (!ok || r.GetJobId() == "") {
			err = errors.New("not an idempotency record")
		}
		if err != nil {
			return s.quarantine(ctx, key, v, rev, err)
		}
		out = append(out, &model.IdempotencyKey{Scope: scope, Key: k, JobID: r.GetJobId(), SpecDigest: r.GetSpecSha256(), Expires: r.GetExpires().AsTime()})
		return nil
	})
	return out, err
}

// DeleteIdempotencyKeys removes expired keys, fenced.
func (s *Store) DeleteIdempotencyKeys(ctx context.Context, ks []*model.IdempotencyKey) error {
	ops := make([]clientv3.Op, 0, len(ks))
	for _, k := range ks {
		ops = append(ops, clientv3.OpDelete(s.idempotencyKey(k)))
	}
	return s.fencedDeletes(ctx, ops)
}
