//go:build linux

package labtest

import "sync"

// syncCounter is a small concurrency-safe multiset for bookkeeping shared by parallel tests.
// It counts, rather than remembers, so a test that closes the same fd number twice (after the
// kernel handed the number back) cancels exactly two of its cleanups, never a third.
type syncCounter[K comparable] struct {
	mu sync.Mutex
	m  map[K]int
}

func newSyncCounter[K comparable]() *syncCounter[K] { return &syncCounter[K]{m: map[K]int{}} }

func (s *syncCounter[K]) add(k K) {
	s.mu.Lock()
	s.m[k]++
	s.mu.Unlock()
}

// take decrements k and reports whether it was present.
func (s *syncCounter[K]) take(k K) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[k] == 0 {
		return false
	}
	s.m[k]--
	if s.m[k] == 0 {
		delete(s.m, k)
	}
	return true
}
