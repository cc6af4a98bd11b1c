package agent

import "slices"

// fairQueue holds queued jobs: one FIFO per submitter (by uid), and submitters take turns
// in the order they first queued. One busy submitter therefore cannot push another's job
// behind its whole backlog: the other waits at most one job per submitter ahead of it.
type fairQueue struct {
	order  []int               // submitters with queued jobs, in turn order
	queues map[int][]*jobEntry // per submitter, oldest first
	next   int                 // index in order of the submitter whose turn it is
}

func newFairQueue() fairQueue { return fairQueue{queues: map[int][]*jobEntry{}} }

func (q *fairQueue) push(j *jobEntry) {
	uid := j.status.Submitter.UID
	if len(q.queues[uid]) == 0 {
		// A submitter that was idle joins just before the one whose turn it is, i.e. at
		// the end of the current round.
		q.order = slices.Insert(q.order, q.next, uid)
		q.next++
		if q.next >= len(q.order) {
			q.next = 0
		}
	}
	q.queues[uid] = append(q.queues[uid], j)
}

// peek returns the job whose turn it is, or nil.
func (q *fairQueue) peek() *jobEntry {
	if len(q.order) == 0 {
		return nil
	}
	return q.queues[q.order[q.next]][0]
}

// pop removes the job peek returned and passes the turn on.
func (q *fairQueue) pop() {
	if len(q.order) == 0 {
		return
	}
	uid := q.order[q.next]
	q.queues[uid] = q.queues[uid][1:]
	if len(q.queues[uid]) == 0 {
		delete(q.queues, uid)
		q.order = slices.Delete(q.order, q.next, q.next+1)
	} else {
		q.next++
	}
	if q.next >= len(q.order) {
		q.next = 0
	}
}

// remove takes a job out of the queue (cancelled while queued); false if it was not there.
func (q *fairQueue) remove(j *jobEntry) bool {
	uid := j.status.Submitter.UID
	i := slices.Index(q.queues[uid], j)
	if i < 0 {
		return false
	}
	q.queues[uid] = slices.Delete(q.queues[uid], i, i+1)
	if len(q.queues[uid]) == 0 {
		delete(q.queues, uid)
		k := slices.Index(q.order, uid)
		q.order = slices.Delete(q.order, k, k+1)
		if k < q.next {
			q.next--
		}
		if q.next >= len(q.order) {
			q.next = 0
		}
	}
	return true
}

func (q *fairQueue) lenOf(uid int) int { return len(q.queues[uid]) }

func (q *fairQueue) len() int {
	n := 0
	for _, js := range q.queues {
		n += len(js)
	}
	return n
}

// position is the job's place in launch order as it stands (1 = next), 0 if not queued.
func (q *fairQueue) position(j *jobEntry) int {
	for i, x := range q.launchOrder() {
		if x == j {
			return i + 1
		}
	}
	return 0
}

// launchOrder lists queued jobs in the order they would launch if nothing else arrived.
func (q *fairQueue) launchOrder() []*jobEntry {
	var out []*jobEntry
	idx := map[int]int{}
	for remaining := q.len(); remaining > 0; {
		for k := range q.order {
			uid := q.order[(q.next+k)%len(q.order)]
			if i := idx[uid]; i < len(q.queues[uid]) {
				out = append(out, q.queues[uid][i])
				idx[uid] = i + 1
				remaining--
			}
		}
	}
	return out
}
