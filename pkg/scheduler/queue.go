package scheduler

import (
	"container/heap"
	"time"
)

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

// enqueue makes a slot pending, due now or after a delay. Callers hold s.mu.
func (s *Scheduler) enqueue(j *jobState, sl *slot, due time.Time, now time.Time) {
	if !sl.queued {
		sl.queued = true
		j.group.pending++
		s.pendingTotal++
	}
	sl.due = due
	if due.After(now) {
		heap.Push(&s.backoff, backoffEntry{job: j, slot: sl, due: due})
		return
	}
	j.queue = append(j.queue, sl)
	s.waiting[j] = struct{}{}
}

// dequeue takes a slot out of the pending count (it was placed or is no longer wanted).
func (s *Scheduler) dequeue(j *jobState, sl *slot) {
	if sl.queued {
		sl.queued = false
		j.group.pending--
		s.pendingTotal--
	}
}

// promoteDue moves slots whose backoff has passed into their job's queue.
func (s *Scheduler) promoteDue(now time.Time) {
	for s.backoff.Len() > 0 && !s.backoff[0].due.After(now) {
		e := heap.Pop(&s.backoff).(backoffEntry)
		if e.slot.queued && e.slot.due.Equal(e.due) && e.slot.cur == nil {
			e.job.queue = append(e.job.queue, e.slot)
			s.waiting[e.job] = struct{}{}
		}
	}
}
