package core

import (
	"container/heap"
	"time"
)

// queues are the pending slots: jobs with slots due now (waiting, each
// job's own queue in order) and slots waiting out a retry delay (backoff).
// pendingTotal counts both. Guarded by Core.mu.
type queues struct {
	waiting      map[*jobState]struct{}
	backoff      backoffHeap
	pendingTotal int
}

func newQueues() queues { return queues{waiting: map[*jobState]struct{}{}} }

// backoffEntry is a slot waiting out a retry delay.
type backoffEntry struct {
	job  *jobState
	slot *slot
	due  time.Time
}

type backoffHeap []backoffEntry

func (h backoffHeap) Len() int           { return len(h) }
func (h backoffHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h backoffHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *backoffHeap) Push(x any)        { *h = append(*h, x.(backoffEntry)) }
func (h *backoffHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// enqueue makes a slot pending, due now or after a delay.
func (q *queues) enqueue(j *jobState, sl *slot, due time.Time, now time.Time) {
	if !sl.queued {
		sl.queued = true
		j.group.pending++
		q.pendingTotal++
	}
	sl.due = due
	if due.After(now) {
		heap.Push(&q.backoff, backoffEntry{job: j, slot: sl, due: due})
		return
	}
	j.queue = append(j.queue, sl)
	q.waiting[j] = struct{}{}
}

// dequeue takes a slot out of the pending count (it was placed or is no longer wanted).
func (q *queues) dequeue(j *jobState, sl *slot) {
	if sl.queued {
		sl.queued = false
		j.group.pending--
		q.pendingTotal--
	}
}

// promoteDue moves slots whose backoff has passed into their job's queue.
func (q *queues) promoteDue(now time.Time) {
	for q.backoff.Len() > 0 && !q.backoff[0].due.After(now) {
		e := heap.Pop(&q.backoff).(backoffEntry)
		if e.slot.queued && e.slot.due.Equal(e.due) && e.slot.open() {
			e.job.queue = append(e.job.queue, e.slot)
			q.waiting[e.job] = struct{}{}
		}
	}
}
