//go:build linux

package lab

import "time"

// Poll calls cond until it returns true or timeout passes, and reports whether it did. It is how
// a lesson waits for the kernel (a state, a queue length, a counter) without sleeping a guessed
// time: the interval starts at 1 ms and backs off to 20 ms, and the condition decides.
func Poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(pause) // a poll interval, not synchronisation
		pause = min(pause*2, 20*time.Millisecond)
	}
}
