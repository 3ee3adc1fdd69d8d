//go:build !linux

package main

import "socklab/internal/needlinux"

func main() { needlinux.Main() }
