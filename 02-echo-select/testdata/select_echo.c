/* A plain select(2) echo server in C, in the style of UNP §6.8 (tcpservselect01.c), for the
 * interop test TestClientWorksWithCSelectServer: it listens on 127.0.0.1 (port chosen by the
 * kernel), prints the port, echoes with blocking writes and closes a client on read() <= 0. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

int main(void) {
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 16) < 0 ||
        getsockname(lfd, (struct sockaddr *)&addr, &len) < 0) {
        perror("select_echo");
        return 1;
    }
    printf("%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    fd_set all;
    FD_ZERO(&all);
    FD_SET(lfd, &all);
    int maxfd = lfd;
    for (;;) {
        fd_set r = all;
        if (select(maxfd + 1, &r, NULL, NULL, NULL) < 0) {
            if (errno == EINTR)
                continue;
            perror("select");
            return 1;
        }
        if (FD_ISSET(lfd, &r)) {
            int c = accept(lfd, NULL, NULL);
            if (c >= FD_SETSIZE) {
                close(c);
            } else if (c >= 0) {
                FD_SET(c, &all);
                if (c > maxfd)
                    maxfd = c;
            }
        }
        for (int fd = 0; fd <= maxfd; fd++) {
            if (fd == lfd || !FD_ISSET(fd, &r))
                continue;
            char buf[4096];
            ssize_t k = read(fd, buf, sizeof buf);
            if (k <= 0) {
                close(fd);
                FD_CLR(fd, &all);
                continue;
            }
            for (ssize_t off = 0; off < k;) {
                ssize_t w = write(fd, buf + off, k - off);
                if (w < 0)
                    break;
                off += w;
            }
        }
    }
}
