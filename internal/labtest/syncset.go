//go:build linux

package labtest

import "sync"

// syncSet is a small concurrency-safe set for bookkeeping shared by parallel tests.
type syncSet[K comparable] struct {
	mu sync.Mutex
	m  map[K]struct{}
}

func newSyncSet[K comparable]() *syncSet[K] { return &syncSet[K]{m: map[K]struct{}{}} }

func (s *syncSet[K]) add(k K) {
	s.mu.Lock()
	s.m[k] = struct{}{}
	s.mu.Unlock()
}

// take removes k and reports whether it was present.
func (s *syncSet[K]) take(k K) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.m[k]
	delete(s.m, k)
	return ok
}
