//go:build linux && race

package main

import (
	"runtime"
	"unsafe"
)

// raceWrote tells the race detector that the kernel wrote p (as unix.Read does after read(2)),
// so that a data race on a read buffer is still caught under -race.
func raceWrote(p []byte) {
	if len(p) > 0 {
		runtime.RaceWriteRange(unsafe.Pointer(&p[0]), len(p))
	}
}

// raceRead tells the race detector that the kernel is about to read p (as unix.SendmsgN does).
func raceRead(p []byte) {
	if len(p) > 0 {
		runtime.RaceReadRange(unsafe.Pointer(&p[0]), len(p))
	}
}
