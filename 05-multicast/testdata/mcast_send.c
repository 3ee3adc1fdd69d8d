/*
 * mcast_send.c - the course's classic multicast sender, in C, made safe.
 *
 * Sends the NUL-terminated MESSAGE to GROUP:PORT COUNT times, INTERVAL_MS
 * apart. The outgoing interface is pinned to loopback with IP_MULTICAST_IF
 * first, and the program refuses to send if that fails: otherwise the kernel
 * would route the group address by the routing table (the default route, off
 * the machine). TTL 1.
 *
 * usage: mcast_send [GROUP [PORT [COUNT [INTERVAL_MS [MESSAGE]]]]]
 *        defaults: 224.0.0.100 8888 10 5000 "BROCAST TEST DATA"
 * The Go sender (go run ./05-multicast send) sends the same bytes.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MCAST_GROUP "224.0.0.100"
#define MCAST_PORT 8888
#define MCAST_IFACE "127.0.0.1"
#define MCAST_DATA "BROCAST TEST DATA"

int main(int argc, char **argv)
{
	const char *group = argc > 1 ? argv[1] : MCAST_GROUP;
	int port = argc > 2 ? atoi(argv[2]) : MCAST_PORT;
	int count = argc > 3 ? atoi(argv[3]) : 10;
	int interval_ms = argc > 4 ? atoi(argv[4]) : 5000;
	const char *msg = argc > 5 ? argv[5] : MCAST_DATA;

	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	struct in_addr iface;
	iface.s_addr = inet_addr(MCAST_IFACE);
	if (setsockopt(s, IPPROTO_IP, IP_MULTICAST_IF, &iface, sizeof iface) < 0) {
		perror("setsockopt IP_MULTICAST_IF (refusing to send)");
		return 1;
	}
	unsigned char ttl = 1;
	if (setsockopt(s, IPPROTO_IP, IP_MULTICAST_TTL, &ttl, sizeof ttl) < 0) {
		perror("setsockopt IP_MULTICAST_TTL");
		return 1;
	}
	struct sockaddr_in to;
	memset(&to, 0, sizeof to);
	to.sin_family = AF_INET;
	to.sin_addr.s_addr = inet_addr(group);
	to.sin_port = htons(port);

	for (int i = 0; i < count; i++) {
		if (i > 0)
			usleep(interval_ms * 1000);
		/* strlen + 1: the terminating NUL travels too, as in the classic code */
		if (sendto(s, msg, strlen(msg) + 1, 0, (struct sockaddr *)&to, sizeof to) < 0) {
			perror("sendto");
			return 1;
		}
	}
	close(s);
	return 0;
}
