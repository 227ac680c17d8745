/* udp_rate: the packet-rate probe of bench_nft.py, in C so the sender is not
 * the bottleneck (a Python send loop spends more per packet than the
 * firewall does, which hides the firewall's cost).
 *
 *   udp_rate send ADDR PORT SECONDS   64-byte datagrams, 64 per sendmmsg; prints how many were
 *                                     sent and the CPU seconds (user+sys) the sender used
 *   udp_rate recv PORT SECONDS        prints "ready", then how many it received within SECONDS
 *
 * On a veth pair the receive path (the firewall included) runs in softirq
 * on the sender's CPU, right after each transmit, and without
 * CONFIG_IRQ_TIME_ACCOUNTING that time is charged to the sender: packets
 * per sender-CPU-second is the cost of the whole path per packet, which a
 * busy machine (other processes taking turns on the core) does not change
 * the way it changes packets per wall-clock second.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    static char buffers[BATCH][2048];
    struct mmsghdr messages[BATCH];
    struct iovec iov[BATCH];
    struct sockaddr_in addr = {.sin_family = AF_INET};
    long count = 0;
    int sending = argc == 5 && strcmp(argv[1], "send") == 0;
    if (!sending && !(argc == 4 && strcmp(argv[1], "recv") == 0)) {
        fprintf(stderr, "usage: udp_rate send ADDR PORT SECONDS | recv PORT SECONDS\n");
        return 2;
    }
    int sock = socket(AF_INET, SOCK_DGRAM, 0);
    addr.sin_port = htons(atoi(argv[sending ? 3 : 2]));
    double seconds = atof(argv[sending ? 4 : 3]);
    memset(messages, 0, sizeof messages);
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = buffers[i], .iov_len = sending ? 64 : sizeof buffers[i]};
        messages[i].msg_hdr.msg_iov = &iov[i];
        messages[i].msg_hdr.msg_iovlen = 1;
    }
    if (sending) {
        if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1 || connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
            perror("connect");
            return 1;
        }
        for (double deadline = now() + seconds; now() < deadline;) {
            int sent = sendmmsg(sock, messages, BATCH, 0);
            if (sent > 0)
                count += sent;
        }
    } else {
        int size = 8 << 20;
        struct timeval tick = {.tv_usec = 100000};
        setsockopt(sock, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
        setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tick, sizeof tick);
        if (bind(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
            perror("bind");
            return 1;
        }
        printf("ready\n");
        fflush(stdout);
        for (double deadline = now() + seconds; now() < deadline;) {
            int got = recvmmsg(sock, messages, BATCH, 0, NULL);
            if (got > 0)
                count += got;
        }
    }
    if (sending) {
        struct rusage usage;
        getrusage(RUSAGE_SELF, &usage);
        printf("%ld %.6f\n", count, usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6);
    } else {
        printf("%ld\n", count);
    }
    return 0;
}
