/* The guest of bench_sandbox.py: times one kind of call in a tight loop.
 *
 *   sandbox_guest connect|udpconnect|sendto|sendmsg|sendmmsg|sendmmsg0 IPV4 PORT ITERATIONS
 *
 * Prints {"op": ..., "ns_per_call": ..., "failures": N} on stdout. connect
 * opens, connects and closes a TCP socket per iteration (the bench's
 * acceptor takes the connection); udpconnect the same with a UDP socket
 * (no handshake: what connect costs without the TCP handshake's kernel
 * work, which on loopback runs inside connect); sendto and sendmsg send one UDP datagram
 * per call (sendmsg with the destination in msg_name, no control data);
 * sendmmsg sends 64 datagrams per call, the same vector each time (from the
 * second call on, each msg_len already holds its length); sendmmsg0 zeroes
 * the msg_len fields before each call, so every length is stored (a
 * supervisor skips a store that changes nothing). Compiled by the bench
 * with gcc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s connect|udpconnect|sendto|sendmsg|sendmmsg|sendmmsg0 IPV4 PORT ITERATIONS\n",
                argv[0]);
        return 2;
    }
    const char *op = argv[1];
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    inet_pton(AF_INET, argv[2], &dst.sin_addr);
    long n = atol(argv[4]), failures = 0;
    char payload[32] = "guestfence bench";
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct mmsghdr msgs[BATCH];
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    memset(msgs, 0, sizeof msgs);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_name = &dst;
        msgs[i].msg_hdr.msg_namelen = sizeof dst;
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    double start = now_ns();
    for (long i = 0; i < n; i++) {
        if (strcmp(op, "connect") == 0 || strcmp(op, "udpconnect") == 0) {
            int s = socket(AF_INET, op[0] == 'u' ? SOCK_DGRAM : SOCK_STREAM, 0);
            if (connect(s, (struct sockaddr *)&dst, sizeof dst) != 0) failures++;
            close(s);
        } else if (strcmp(op, "sendto") == 0) {
            if (sendto(udp, payload, sizeof payload, 0, (struct sockaddr *)&dst, sizeof dst) < 0) failures++;
        } else if (strcmp(op, "sendmsg") == 0) {
            if (sendmsg(udp, &msgs[0].msg_hdr, 0) < 0) failures++;
        } else {
            for (int j = 0; op[8] == '0' && j < BATCH; j++)
                msgs[j].msg_len = 0; /* sendmmsg0: every length changes, so every one is stored */
            if (sendmmsg(udp, msgs, BATCH, 0) != BATCH) failures++;
        }
    }
    double elapsed = now_ns() - start;
    printf("{\"op\": \"%s\", \"ns_per_call\": %.1f, \"failures\": %ld}\n", op, n ? elapsed / n : 0.0, failures);
    return 0;
}
