/* The test VMs' prober: a static binary, so a VM with nothing but busybox
 * (no Python, no 9p root: seconds to boot under TCG) can try TCP and UDP,
 * which busybox's nc cannot (no UDP in Debian's build).
 *
 *   probe SECONDS TARGET...
 *     tcp://A:P         connect             -> open | refused | timeout | <errno name>
 *     udp://A:P         send, await a reply -> reply | refused | silent | <errno name>
 *     udp-listen://P    await one datagram  -> got:<payload> | silent
 *
 * One line per target, "TARGET RESULT", in order; A is IPv4 or [IPv6].
 * Exit status 0 unless the arguments are malformed (2). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int timeout_ms;

static const char *errname(int err) {
    switch (err) {
    case ECONNREFUSED: return "refused";
    case ETIMEDOUT: return "timeout";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ECONNRESET: return "ECONNRESET";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    default: return "error";
    }
}

static int address(const char *text, struct sockaddr_storage *ss, socklen_t *len) {
    char host[64];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof host)
        return -1;
    memcpy(host, text, colon - text);
    host[colon - text] = 0;
    int port = atoi(colon + 1);
    memset(ss, 0, sizeof *ss);
    if (host[0] == '[') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        size_t n = strlen(host);
        if (n < 3 || host[n - 1] != ']')
            return -1;
        host[n - 1] = 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons(port);
        *len = sizeof *a;
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    *len = sizeof *a;
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

static const char *tcp(const struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errname(errno);
    const char *result = "open";
    if (connect(fd, (const struct sockaddr *)ss, len) != 0) {
        if (errno != EINPROGRESS) {
            result = errname(errno);
        } else {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int err = 0;
            socklen_t errlen = sizeof err;
            if (poll(&p, 1, timeout_ms) != 1)
                result = "timeout";
            else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) != 0 || err != 0)
                result = errname(err);
        }
    }
    close(fd);
    return result;
}

static const char *udp(const struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char buf[64];
    if (fd < 0)
        return errname(errno);
    const char *result = "reply";
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (connect(fd, (const struct sockaddr *)ss, len) != 0 || send(fd, "probe", 5, 0) != 5)
        result = errname(errno);
    else if (poll(&p, 1, timeout_ms) != 1)
        result = "silent";
    else if (recv(fd, buf, sizeof buf, 0) < 0)
        result = errname(errno);
    close(fd);
    return result;
}

static void listen_udp(const char *target, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1, fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    char buf[256];
    struct pollfd p = {.fd = fd, .events = POLLIN};
    setsockopt(fd, SOL_SOCKET, SO_BROADCAST, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        printf("%s %s\n", target, errname(errno));
        return;
    }
    ssize_t n = poll(&p, 1, timeout_ms) == 1 ? recv(fd, buf, sizeof buf - 1, 0) : -1;
    if (n < 0) {
        printf("%s silent\n", target);
    } else {
        buf[n] = 0;
        printf("%s got:%s\n", target, buf);
    }
    close(fd);
}

int main(int argc, char **argv) {
    if (argc < 3 || (timeout_ms = atoi(argv[1]) * 1000) <= 0) {
        fprintf(stderr, "usage: probe SECONDS tcp://A:P|udp://A:P|udp-listen://P ...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 2; i < argc; i++) {
        struct sockaddr_storage ss;
        socklen_t len;
        const char *t = argv[i];
        if (strncmp(t, "udp-listen://", 13) == 0) {
            listen_udp(t, atoi(t + 13));
        } else if (strncmp(t, "tcp://", 6) == 0 && address(t + 6, &ss, &len) == 0) {
            printf("%s %s\n", t, tcp(&ss, len));
        } else if (strncmp(t, "udp://", 6) == 0 && address(t + 6, &ss, &len) == 0) {
            printf("%s %s\n", t, udp(&ss, len));
        } else {
            fprintf(stderr, "probe: cannot parse %s\n", t);
            return 2;
        }
    }
    return 0;
}
