/* A hostile guest: other threads race each trapped call's arguments and
 * socket state while the main thread makes trapped calls to an allowed
 * destination. The judge is the test's denied listener, not this program.
 *
 *   hostile MODE ALLOWED_PORT DENIED_PORT SECONDS
 *
 * Prints one line, "attempts N", and exits 0. Modes:
 *
 * addrform  an INET6 UDP socket connected to ::ffff:127.0.0.1:ALLOWED sends
 *           sendmmsg batches whose names are AF_UNSPEC ("the connected peer"
 *           on INET6) but whose bytes, read as a sockaddr_in, say
 *           127.0.0.1:DENIED; a racer converts the socket to INET with
 *           IPV6_ADDRFORM, after which the kernel reads those bytes as IPv4.
 * fastopen  a TCP socket connected to 127.0.0.1:ALLOWED sends with
 *           MSG_FASTOPEN and a name 127.0.0.1:DENIED; a racer disconnects
 *           it with connect(AF_UNSPEC), after which the kernel connects to
 *           the name.
 * stress    all of the above at once, plus racers that flip the shared
 *           sockaddr between allowed and denied addresses and families,
 *           dup2 other sockets over the fd in use, and vary the flags.
 * churn     no race: SECONDS is a count N; N short-lived threads, 32 at a
 *           time, each send one datagram to 127.0.0.1:ALLOWED.
 * send      no race: N datagrams to 127.0.0.1:ALLOWED from one thread.
 *
 * churn and send print "attempts N failures F" (F: sends that failed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_FASTOPEN
#define MSG_FASTOPEN 0x20000000
#endif
#define BATCH 64

static int allowed_port, denied_port;
static atomic_int running = 1;
static atomic_int target_fd = -1; /* the socket the main thread is using now */
static atomic_int target_v6 = 0;   /* whether it is an INET6 socket */
static atomic_int target_tcp = 0;
static struct sockaddr_storage shared_name; /* rewritten by the flipper */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in v4(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    return a;
}

static struct sockaddr_in6 v6(const char *host, int port) {
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
    inet_pton(AF_INET6, host, &a.sin6_addr);
    return a;
}

/* A sockaddr of family AF_UNSPEC whose bytes read as sockaddr_in are 127.0.0.1:DENIED. */
static struct sockaddr_in unspec_denied(void) {
    struct sockaddr_in a = v4("127.0.0.1", denied_port);
    a.sin_family = AF_UNSPEC;
    return a;
}

static int mapped_udp(void) {
    int s = socket(AF_INET6, SOCK_DGRAM, 0);
    struct sockaddr_in6 peer = v6("::ffff:127.0.0.1", allowed_port);
    connect(s, (struct sockaddr *)&peer, sizeof peer);
    return s;
}

static void *addrform_racer(void *unused) {
    (void)unused;
    int inet = AF_INET;
    while (running) {
        int fd = target_fd;
        if (fd >= 0 && target_v6)
            setsockopt(fd, IPPROTO_IPV6, IPV6_ADDRFORM, &inet, sizeof inet);
        else
            sched_yield();
    }
    return NULL;
}

static void *disconnect_racer(void *unused) {
    (void)unused;
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    while (running) {
        int fd = target_fd;
        if (fd >= 0 && target_tcp)
            connect(fd, &unspec, sizeof unspec);
        else
            sched_yield();
    }
    return NULL;
}

/* Keep the value visible a while; the barrier keeps the compiler from
 * dropping the store as dead (nothing in this thread reads it). */
static void hold(void) {
    __asm__ volatile("" ::: "memory");
    for (volatile int spin = 0; spin < 2000; spin++) {
    }
}

/* Half of the time the shared sockaddr names a denied destination. */
static void *flipper(void *unused) {
    (void)unused;
    struct sockaddr_in ok = v4("127.0.0.1", allowed_port), no = v4("127.0.0.1", denied_port);
    struct sockaddr_in no2 = v4("127.0.0.2", denied_port), unspec = unspec_denied();
    struct sockaddr_in6 no6 = v6("::1", denied_port);
    for (unsigned i = 0; running; i++) {
        switch (i % 4) {
        case 0: memcpy(&shared_name, &no, sizeof no); break;
        case 1: memcpy(&shared_name, &no2, sizeof no2); break;
        case 2: memcpy(&shared_name, &unspec, sizeof unspec); break;
        default: memcpy(&shared_name, &no6, sizeof no6); break;
        }
        hold();
        memcpy(&shared_name, &ok, sizeof ok);
        hold();
    }
    return NULL;
}

/* dup2 another socket over the fd in use: an unconnected INET UDP one, a
 * mapped INET6 one, an unconnected TCP one. */
static void *duper(void *unused) {
    (void)unused;
    for (unsigned i = 0; running; i++) {
        int fd = target_fd;
        if (fd < 0) {
            sched_yield();
            continue;
        }
        int other = i % 3 == 0 ? socket(AF_INET, SOCK_DGRAM, 0) : i % 3 == 1 ? mapped_udp() : socket(AF_INET, SOCK_STREAM, 0);
        if (target_fd == fd) dup2(other, fd);
        close(other);
    }
    return NULL;
}

static void fill(struct mmsghdr *msgs, struct iovec *iov, void *name, socklen_t len) {
    memset(msgs, 0, sizeof(struct mmsghdr) * BATCH);
    for (int i = 0; i < BATCH; i++) {
        msgs[i].msg_hdr.msg_name = name;
        msgs[i].msg_hdr.msg_namelen = len;
        msgs[i].msg_hdr.msg_iov = iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
}

static long addrform_round(void) {
    static struct mmsghdr msgs[BATCH];
    static struct sockaddr_in name;
    static char payload[] = "addrform";
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    name = unspec_denied();
    fill(msgs, &iov, &name, sizeof name);
    int s = mapped_udp();
    target_v6 = 1;
    target_fd = s;
    sendmmsg(s, msgs, BATCH, 0);
    target_fd = -1;
    close(s);
    return 1;
}

static long fastopen_round(void) {
    struct sockaddr_in ok = v4("127.0.0.1", allowed_port), no = v4("127.0.0.1", denied_port);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&ok, sizeof ok) != 0) {
        close(s);
        return 0;
    }
    target_tcp = 1;
    target_fd = s;
    sendto(s, "fastopen", 8, MSG_FASTOPEN | MSG_NOSIGNAL, (struct sockaddr *)&no, sizeof no);
    target_fd = -1;
    target_tcp = 0;
    close(s);
    return 1;
}

/* One trapped call of a random kind, on a random socket, naming the shared
 * (racing) sockaddr, while every racer runs. */
static long stress_round(unsigned i) {
    static struct mmsghdr msgs[BATCH];
    static char payload[] = "stress";
    struct iovec iov = {.iov_base = payload, .iov_len = sizeof payload};
    int kind = i % 4, s;
    if (kind == 0) {
        s = socket(AF_INET, SOCK_DGRAM, 0);
    } else if (kind == 1) {
        s = mapped_udp();
    } else {
        s = socket(i % 8 < 4 ? AF_INET : AF_INET6, SOCK_STREAM, 0);
    }
    target_v6 = kind == 1 || (kind >= 2 && i % 8 >= 4);
    target_tcp = kind >= 2;
    target_fd = s;
    int flags = MSG_NOSIGNAL | MSG_DONTWAIT | ((i / 4) % 2 ? MSG_FASTOPEN : 0);
    switch ((i / 8) % 4) {
    case 0: connect(s, (struct sockaddr *)&shared_name, sizeof(struct sockaddr_in6)); break;
    case 1: sendto(s, payload, sizeof payload, flags, (struct sockaddr *)&shared_name, sizeof(struct sockaddr_in6)); break;
    case 2: {
        struct msghdr m = {.msg_name = &shared_name, .msg_namelen = sizeof(struct sockaddr_in6), .msg_iov = &iov,
                           .msg_iovlen = 1};
        sendmsg(s, &m, flags);
        break;
    }
    default:
        fill(msgs, &iov, &shared_name, sizeof(struct sockaddr_in6));
        sendmmsg(s, msgs, BATCH, flags);
    }
    target_fd = -1;
    close(s);
    return 1;
}

static atomic_long failures;

static void send_one(int s) {
    struct sockaddr_in ok = v4("127.0.0.1", allowed_port);
    if (sendto(s, "one", 3, 0, (struct sockaddr *)&ok, sizeof ok) != 3) failures++;
}

static void *churner(void *unused) {
    (void)unused;
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    send_one(s);
    close(s);
    return NULL;
}

static int count_mode(const char *mode, long n) {
    if (strcmp(mode, "churn") == 0) {
        pthread_t wave[32];
        for (long done = 0; done < n; done += 32) {
            int k = n - done < 32 ? (int)(n - done) : 32;
            for (int i = 0; i < k; i++)
                if (pthread_create(&wave[i], NULL, churner, NULL) != 0) return 1;
            for (int i = 0; i < k; i++) pthread_join(wave[i], NULL);
        }
    } else {
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        for (long i = 0; i < n; i++) send_one(s);
    }
    printf("attempts %ld failures %ld\n", n, (long)failures);
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s addrform|fastopen|stress|churn|send ALLOWED_PORT DENIED_PORT SECONDS|N\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    allowed_port = atoi(argv[2]);
    denied_port = atoi(argv[3]);
    if (strcmp(mode, "churn") == 0 || strcmp(mode, "send") == 0) return count_mode(mode, atol(argv[4]));
    double deadline = now() + atof(argv[4]);
    struct sockaddr_in ok = v4("127.0.0.1", allowed_port);
    memcpy(&shared_name, &ok, sizeof ok);
    pthread_t racers[4];
    int n = 0;
    int stress = strcmp(mode, "stress") == 0;
    if (stress || strcmp(mode, "addrform") == 0) pthread_create(&racers[n++], NULL, addrform_racer, NULL);
    if (stress || strcmp(mode, "fastopen") == 0) pthread_create(&racers[n++], NULL, disconnect_racer, NULL);
    if (stress) {
        pthread_create(&racers[n++], NULL, flipper, NULL);
        pthread_create(&racers[n++], NULL, duper, NULL);
    }
    long attempts = 0;
    for (unsigned i = 0; now() < deadline; i++) {
        if (strcmp(mode, "addrform") == 0)
            attempts += addrform_round();
        else if (strcmp(mode, "fastopen") == 0)
            attempts += fastopen_round();
        else
            attempts += stress_round(i);
    }
    running = 0;
    for (int i = 0; i < n; i++) pthread_join(racers[i], NULL);
    printf("attempts %ld\n", attempts);
    return 0;
}
