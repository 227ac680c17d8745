/* A sendmmsg that outlives its caller, and a process that then takes the
 * caller's number: where do the msg_len results go?
 *
 *   late_lengths guest PORT ENTRIES process|thread
 *   late_lengths victim
 *
 * Both map the same two pages at ADDR, filled with 0xA5 bytes. The guest
 * builds there a vector of ENTRIES stream messages, 128 KiB in all, for a
 * TCP connection to 127.0.0.1:PORT whose reader does not read (the test's),
 * so the supervisor's send waits. The caller is a child process or a
 * thread of the guest (then not the thread-group leader: its number is
 * freed as soon as it exits). Lines on stdin and stdout:
 *
 *   guest:  "caller TID"; reads "kill", ends the caller (SIGKILL; a thread:
 *           a signal whose handler calls exit), waits until its number is
 *           free, "dead"; reads "report": "lengths L0 L1 ..." (its own
 *           msg_len fields; 0xA5A5A5A5 = untouched), exits 0.
 *   victim: "ready PID"; reads "check": "intact", or "changed N" (N bytes
 *           of the two pages differ from 0xA5), exits 0.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ADDR ((void *)0x5a5a000000UL) /* below 2^39: any 64-bit address space has it */
#define SIZE 8192
#define PATTERN 0xA5
#define TOTAL (128 * 1024)

static int sock, entries;
static struct mmsghdr *vector;
static volatile pid_t caller_tid;

static unsigned char *pages(void)
{
    unsigned char *p = mmap(ADDR, SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
                            -1, 0);
    if (p != ADDR) {
        perror("mmap at ADDR");
        exit(2);
    }
    memset(p, PATTERN, SIZE);
    return p;
}

static void expect(const char *word)
{
    char line[64];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, word, strlen(word)) != 0) {
        fprintf(stderr, "expected %s\n", word);
        exit(2);
    }
}

static void send_all(void)
{
    caller_tid = gettid();
    sendmmsg(sock, vector, entries, 0); /* waits in the supervisor until the reader reads */
}

static void *caller_thread(void *unused)
{
    (void)unused;
    send_all();
    return NULL;
}

static void leave_thread(int sig)
{
    (void)sig;
    syscall(SYS_exit, 0); /* this thread only; its number is freed at once (not the leader) */
}

static int guest(int port, const char *kind)
{
    vector = (struct mmsghdr *)pages();
    if ((size_t)entries * sizeof *vector > SIZE)
        return 2;
    size_t each = TOTAL / entries;
    unsigned char *payload = calloc(1, TOTAL);
    struct iovec *iov = calloc(entries, sizeof *iov);
    for (int i = 0; i < entries; i++) {
        iov[i] = (struct iovec){payload + i * each, each};
        vector[i].msg_hdr = (struct msghdr){.msg_iov = &iov[i], .msg_iovlen = 1};
    }
    sock = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(sock, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    if (connect(sock, (struct sockaddr *)&to, sizeof to) != 0) {
        perror("connect");
        return 2;
    }
    pid_t child = -1;
    pthread_t thread;
    if (strcmp(kind, "process") == 0) {
        child = fork();
        if (child == 0) {
            send_all();
            _exit(0);
        }
        caller_tid = child;
    } else {
        signal(SIGUSR1, leave_thread);
        pthread_create(&thread, NULL, caller_thread, NULL);
        while (!caller_tid)
            sched_yield();
    }
    printf("caller %d\n", caller_tid);
    fflush(stdout);
    expect("kill");
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    } else {
        syscall(SYS_tgkill, getpid(), caller_tid, SIGUSR1);
        struct timespec ms = {0, 1000000};
        for (int i = 0; i < 10000 && syscall(SYS_tgkill, getpid(), caller_tid, 0) == 0; i++)
            nanosleep(&ms, NULL); /* until the thread is released: its number is free */
    }
    printf("dead\n");
    fflush(stdout);
    expect("report");
    printf("lengths");
    for (int i = 0; i < entries; i++)
        printf(" %u", vector[i].msg_len);
    printf("\n");
    fflush(stdout);
    return 0;
}

static int victim(void)
{
    unsigned char *p = pages();
    printf("ready %d\n", getpid());
    fflush(stdout);
    expect("check");
    int changed = 0;
    for (int i = 0; i < SIZE; i++)
        changed += p[i] != PATTERN;
    if (changed)
        printf("changed %d\n", changed);
    else
        printf("intact\n");
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "guest") == 0) {
        entries = atoi(argv[3]);
        return entries > 0 ? guest(atoi(argv[2]), argv[4]) : 2;
    }
    if (argc == 2 && strcmp(argv[1], "victim") == 0)
        return victim();
    fprintf(stderr, "usage: late_lengths guest PORT ENTRIES process|thread | late_lengths victim\n");
    return 2;
}
