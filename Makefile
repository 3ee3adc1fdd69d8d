# socklab — the front door. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
# Pinned so every machine lints alike; fetched through the Go toolchain, nothing to install.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Flags for the demos, e.g. make run-01 ARGS="backlog -host".
ARGS ?=
CHAPTERS := 01-socket-bind-listen 02-echo-select 03-shutdown-halfclose 04-reuseaddr \
            05-multicast 06-epoll-server 07-sendfile-splice

ifneq ($(shell uname -s),Linux)
$(error socklab needs Linux, because every lab makes Linux system calls (sock_diag, namespaces, epoll, splice): use a Linux VM or container)
endif

.DEFAULT_GOAL := help
.PHONY: help test test-race test-unprivileged lint bench docs check-host-sysctls \
        $(addprefix run-,01 02 03 04 05 06 07)

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | \
	  awk -F'\t' '{ printf "  make %-20s %s\n", $$1, $$2 }'

# run-NN: the chapter's full narrated demo. A chapter not written yet says so and fails.
define run_chapter
	@dir=$(filter $(1)-%,$(CHAPTERS)); \
	if [ ! -f "$$dir/main.go" ]; then \
	  echo "chapter $$dir is not written yet: see its open issue"; exit 1; fi; \
	$(GO) run ./$$dir $(ARGS)
endef
run-01: ## demo: byte order, socket/bind/listen, backlog, the three-way handshake
	$(call run_chapter,01)
run-02: ## demo: a select(2) echo server and client
	$(call run_chapter,02)
run-03: ## demo: four-way close, half-close with shutdown(2), every closing state
	$(call run_chapter,03)
run-04: ## demo: TIME_WAIT, SO_REUSEADDR and SO_REUSEPORT
	$(call run_chapter,04)
run-05: ## demo: IPv4 multicast and broadcast
	$(call run_chapter,05)
run-06: ## demo: an epoll echo server with a worker pool
	$(call run_chapter,06)
run-07: ## demo: zero-copy with sendfile, splice, mmap, writev
	$(call run_chapter,07)

test: ## go vet and every test (what CI and the README use)
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 8m ./...

test-race: ## every test under the race detector
	$(GO) test -race -count=1 -timeout 15m ./...

test-unprivileged: ## (as root) run the compiled tests as user nobody, as a student would
	.ci/unprivileged-tests

lint: ## gofmt check, go vet, staticcheck (pinned)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: ## benchmarks (performance claims live here, never in tests)
	$(GO) test -run '^$$' -bench . -benchmem -count=1 -timeout 30m ./...

docs: ## regenerate the demo transcripts in docs/transcripts/ from the programs
	@mkdir -p docs/transcripts
# Each transcript goes to a temporary file beside it, renamed only when the demo exits 0, so a
# failed or interrupted run never leaves a truncated transcript; a failure names the chapter.
# docs/transcript_test.go (TestTranscriptsMatchPrograms) checks the programs still print them.
	@tmp=; trap 'rm -f "$$tmp"' EXIT; trap 'exit 130' INT TERM; \
	for dir in $(CHAPTERS); do \
	  if [ -f "$$dir/main.go" ]; then \
	    echo "transcript: $$dir"; \
	    tmp=$$(mktemp "docs/transcripts/.$$dir.txt.XXXXXX") || exit 1; \
	    if NO_COLOR=1 $(GO) run ./$$dir > "$$tmp" 2>&1; then \
	      chmod 644 "$$tmp" && mv -f "$$tmp" "docs/transcripts/$$dir.txt" || exit 1; \
	    else \
	      status=$$?; \
	      echo "make docs: the $$dir demo failed (exit status $$status), so" \
	        "docs/transcripts/$$dir.txt was left unchanged; its last lines:" >&2; \
	      tail -n 20 "$$tmp" | sed 's/^/  | /' >&2; \
	      exit 1; \
	    fi; \
	  fi; \
	done

check-host-sysctls: ## snapshot host net.* sysctls, run make test, prove nothing changed
	.ci/host-sysctls-unchanged $(MAKE) test
