/*
 * epoll_echo.c — the chapter's epoll echo server written in C, as the reference for
 * BenchmarkVersusC ("as fast as C"). It makes the system calls the Go server makes in its
 * default mode (inline, level-triggered; docs/06-epoll-server.md, "The server, robust"):
 *
 *   accept4(SOCK_NONBLOCK|SOCK_CLOEXEC), epoll_ctl(EPOLLIN|EPOLLRDHUP), epoll_pwait,
 *   one read(2) of at most 64 KiB per report, sendmsg(2) with MSG_NOSIGNAL,
 *   pending output kept and the socket armed for EPOLLOUT only (backpressure),
 *   the reserve fd for EMFILE/ENFILE, exit 0 on SIGINT/SIGTERM.
 *
 * It is a yardstick for the hot path, not a second robust server: when the reserve cannot be
 * opened again it does not disarm the listener as the Go server does (reserveOrPause in
 * server.go), so at that point it would spin on the queued connection.
 *
 * Usage: epoll_echo [PORT]   (on 127.0.0.1; 0 or nothing picks a port)
 * It prints "-> listening on 127.0.0.1:PORT" once it listens, as the Go server does.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define CHUNK (64 * 1024) /* the Go server's default -chunk */
#define MAX_EVENTS 256    /* as the Go server's loop */

struct conn {
	int fd;
	char *out; /* output the kernel would not take yet, or NULL */
	size_t out_len;
};

static int epfd, lfd, reservefd = -1;
static volatile sig_atomic_t stop;
static char buf[CHUNK]; /* one read buffer for every connection, as the Go inline loop */

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what)
{
	fprintf(stderr, "epoll_echo: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void close_conn(struct conn *c)
{
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	free(c->out);
	free(c);
}

static void arm(struct conn *c, int want_out)
{
	struct epoll_event ev = {.events = want_out ? EPOLLOUT : EPOLLIN | EPOLLRDHUP, .data.ptr = c};
	epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* send_all sends p; what the kernel will not take yet is kept in c->out. It returns -1 when
 * the connection is gone, 1 when output is pending, 0 when all was sent. */
static int send_all(struct conn *c, const char *p, size_t len)
{
	while (len > 0) {
		struct iovec iov = {.iov_base = (void *)p, .iov_len = len};
		struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL);
		if (n >= 0) {
			p += n;
			len -= (size_t)n;
		} else if (errno == EAGAIN) {
			char *out = malloc(len);
			if (out == NULL)
				return -1;
			memcpy(out, p, len);
			c->out = out;
			c->out_len = len;
			return 1;
		} else if (errno != EINTR) {
			return -1; /* EPIPE, ECONNRESET */
		}
	}
	return 0;
}

/* serve handles one report for c: flush pending output, or read once and echo. */
static void serve(struct conn *c)
{
	if (c->out != NULL) {
		char *out = c->out;
		size_t len = c->out_len;
		c->out = NULL;
		int r = send_all(c, out, len);
		free(out);
		if (r < 0) {
			close_conn(c);
			return;
		}
		if (r > 0)
			return; /* still armed for EPOLLOUT */
		arm(c, 0);
	}
	for (;;) {
		ssize_t n = read(c->fd, buf, sizeof buf);
		if (n > 0) {
			int r = send_all(c, buf, (size_t)n);
			if (r < 0)
				close_conn(c);
			else if (r > 0)
				arm(c, 1);
			return; /* level-triggered: the kernel reports again if more is waiting */
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		close_conn(c); /* 0: the peer's FIN, all echoed; or ECONNRESET */
		return;
	}
}

static void accept_ready(void)
{
	int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		if ((errno == EMFILE || errno == ENFILE) && reservefd >= 0) {
			/* Shed: free the reserve, accept and close the connection, take the reserve back. */
			close(reservefd);
			fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			if (fd >= 0)
				close(fd);
			reservefd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		}
		return; /* EAGAIN, ECONNABORTED, EINTR: level-triggered, reported again if need be */
	}
	struct conn *c = calloc(1, sizeof *c);
	if (c == NULL) {
		close(fd);
		return;
	}
	c->fd = fd;
	struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		close(fd);
		free(c);
	}
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 0;
	sigset_t block, orig;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	/* Blocked except inside epoll_pwait, so a signal cannot slip in between the check of
	 * stop and the wait (epoll_wait(2), epoll_pwait). */
	sigprocmask(SIG_BLOCK, &block, &orig);
	struct sigaction sa = {.sa_handler = on_signal};
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		die("socket");
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0)
		die("bind");
	if (listen(lfd, 4096) < 0)
		die("listen");
	socklen_t alen = sizeof addr;
	if (getsockname(lfd, (struct sockaddr *)&addr, &alen) < 0)
		die("getsockname");
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		die("epoll_create1");
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) < 0)
		die("epoll_ctl");
	reservefd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	printf("-> listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
	fflush(stdout);

	struct epoll_event events[MAX_EVENTS];
	while (!stop) {
		int n = epoll_pwait(epfd, events, MAX_EVENTS, -1, &orig);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_pwait");
		}
		for (int i = 0; i < n; i++) {
			if (events[i].data.ptr == NULL)
				accept_ready();
			else
				serve(events[i].data.ptr);
		}
	}
	return 0; /* exit closes every fd; nothing else is held */
}
