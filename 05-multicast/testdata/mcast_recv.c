/*
 * mcast_recv.c - the course's classic multicast receiver, in C.
 *
 * Joins MCAST_GROUP on the loopback interface, prints each datagram as
 *     recv: <payload> from <addr>:<port>
 * and, on stderr, its exact bytes in hex (so tests can compare byte for byte),
 * then leaves the group with IP_DROP_MEMBERSHIP after COUNT datagrams.
 *
 * usage: mcast_recv [GROUP [PORT [COUNT]]]   defaults: 224.0.0.100 8888 5
 * The Go receiver (go run ./05-multicast recv) behaves the same way.
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
#define MCAST_IFACE "127.0.0.1" /* join on loopback only */

int main(int argc, char **argv)
{
	const char *group = argc > 1 ? argv[1] : MCAST_GROUP;
	int port = argc > 2 ? atoi(argv[2]) : MCAST_PORT;
	int count = argc > 3 ? atoi(argv[3]) : 5;

	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (s < 0) {
		perror("socket");
		return 1;
	}
	int yes = 1;
	if (setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes) < 0) {
		perror("setsockopt SO_REUSEADDR");
		return 1;
	}
	struct sockaddr_in local;
	memset(&local, 0, sizeof local);
	local.sin_family = AF_INET;
	local.sin_addr.s_addr = htonl(INADDR_ANY);
	local.sin_port = htons(port);
	if (bind(s, (struct sockaddr *)&local, sizeof local) < 0) {
		perror("bind");
		return 1;
	}
	int loop = 1;
	if (setsockopt(s, IPPROTO_IP, IP_MULTICAST_LOOP, &loop, sizeof loop) < 0) {
		perror("setsockopt IP_MULTICAST_LOOP");
		return 1;
	}
	struct ip_mreq mreq;
	mreq.imr_multiaddr.s_addr = inet_addr(group);
	mreq.imr_interface.s_addr = inet_addr(MCAST_IFACE);
	if (setsockopt(s, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mreq, sizeof mreq) < 0) {
		perror("setsockopt IP_ADD_MEMBERSHIP");
		return 1;
	}

	for (int i = 0; i < count; i++) {
		char buf[1500];
		struct sockaddr_in from;
		socklen_t len = sizeof from;
		ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &len);
		if (n < 0) {
			perror("recvfrom");
			return 1;
		}
		buf[n] = '\0'; /* the sender's NUL is part of the datagram; this one is a guard */
		printf("recv: %s from %s:%d\n", buf, inet_ntoa(from.sin_addr), ntohs(from.sin_port));
		fflush(stdout);
		fprintf(stderr, "bytes %zd:", n);
		for (ssize_t j = 0; j < n; j++)
			fprintf(stderr, " %02x", (unsigned char)buf[j]);
		fprintf(stderr, "\n");
	}

	if (setsockopt(s, IPPROTO_IP, IP_DROP_MEMBERSHIP, &mreq, sizeof mreq) < 0) {
		perror("setsockopt IP_DROP_MEMBERSHIP");
		return 1;
	}
	close(s);
	return 0;
}
