/* The fd-swap race against calls on unix and netlink sockets.
 *
 *   race_local CALL LOCAL PORT SECONDS UNIXPATH
 *     CALL   connect | sendto | sendmsg | sendmmsg
 *     LOCAL  unix | netlink
 *
 * One fd number N and one address buffer are shared by two threads. The
 * flipper thread alternates them between state A (N is a unix or netlink
 * socket, the buffer holds a unix path or the kernel's netlink address)
 * and state B (N is an INET socket -- TCP for connect, UDP for sends --
 * and the buffer holds 127.0.0.1:PORT). The main thread calls CALL on N
 * with the buffer as fast as it can for SECONDS. A supervisor that looks
 * at N, sees state A and lets the kernel run the call (which looks N and
 * the buffer up again, now in state B) lets an unchecked connect or send
 * through to PORT. The judge is the listener on PORT; this program only
 * prints "attempts N".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define N 100          /* the fd number both threads use */
#define NAMELEN 110    /* sizeof(struct sockaddr_un): valid for every family here */

static union {
    struct sockaddr_storage storage;
    struct sockaddr_un un;
    struct sockaddr_nl nl;
    struct sockaddr_in in;
} address;
static struct sockaddr_storage local_name, inet_name;
static int local_fd, use_tcp, use_unix;
static atomic_int stop;

/* Each state is held for a moment (a few microseconds of spinning), so
 * that on a loaded machine both states are seen often by both sides. */
static void hold(void) {
    for (volatile int i = 0; i < 2000; i++)
        ;
}

static int inet_socket(void) {
    return socket(AF_INET, (use_tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK, 0);
}

static void *flipper(void *unused) {
    (void)unused;
    int inet = inet_socket();
    while (!atomic_load(&stop)) {
        dup2(local_fd, N);
        memcpy(&address, &local_name, sizeof address);
        hold();
        dup2(inet, N);
        memcpy(&address, &inet_name, sizeof address);
        hold();
        if (use_tcp) {  /* a TCP socket connects once: take a fresh one each round */
            close(inet);
            inet = inet_socket();
        }
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: race_local connect|sendto|sendmsg|sendmmsg unix|netlink PORT SECONDS UNIXPATH\n");
        return 2;
    }
    const char *call = argv[1];
    use_unix = strcmp(argv[2], "unix") == 0;
    use_tcp = strcmp(call, "connect") == 0;
    double seconds = atof(argv[4]);

    struct sockaddr_in *in = (struct sockaddr_in *)&inet_name;
    in->sin_family = AF_INET;
    in->sin_port = htons(atoi(argv[3]));
    in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (use_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&local_name;
        un->sun_family = AF_UNIX;
        strncpy(un->sun_path, argv[5], sizeof un->sun_path - 1);
        local_fd = socket(AF_UNIX, (use_tcp ? SOCK_STREAM : SOCK_DGRAM) | SOCK_NONBLOCK, 0);
    } else {
        struct sockaddr_nl *nl = (struct sockaddr_nl *)&local_name;
        nl->nl_family = AF_NETLINK;  /* nl_pid 0: the kernel */
        local_fd = socket(AF_NETLINK, SOCK_RAW | SOCK_NONBLOCK, NETLINK_ROUTE);
    }
    if (local_fd < 0) {
        perror("socket");
        return 1;
    }

    pthread_t thread;
    pthread_create(&thread, NULL, flipper, NULL);
    char payload[1] = {'x'};
    struct iovec iov = {payload, sizeof payload};
    struct msghdr msg = {.msg_name = &address, .msg_namelen = NAMELEN, .msg_iov = &iov, .msg_iovlen = 1};
    struct mmsghdr mmsg = {.msg_hdr = msg};
    long attempts = 0;
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < 64; i++, attempts++) {
            if (use_tcp)
                connect(N, (struct sockaddr *)&address, NAMELEN);
            else if (strcmp(call, "sendto") == 0)
                sendto(N, payload, sizeof payload, MSG_DONTWAIT, (struct sockaddr *)&address, NAMELEN);
            else if (strcmp(call, "sendmsg") == 0)
                sendmsg(N, &msg, MSG_DONTWAIT);
            else
                sendmmsg(N, &mmsg, 1, MSG_DONTWAIT);
        }
    }
    atomic_store(&stop, 1);
    pthread_join(thread, NULL);
    printf("attempts %ld\n", attempts);
    return 0;
}
