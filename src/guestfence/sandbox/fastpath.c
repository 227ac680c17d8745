/*
 * guestfence-fastpath.so: the supervisor's hot path, compiled. Loaded by
 * supervisor.py with ctypes (every call into it releases the GIL).
 *
 * Why C: per trapped call, the Python handler spent 3-10x the system calls'
 * own time in ctypes conversions, small objects and GIL hand-offs between
 * handler threads (docs/sandbox.md, "Cost"). Here a handler thread receives
 * a notification and, for the common case only, answers it without
 * returning to Python:
 *
 *     connect, sendto, sendmsg, and sendmmsg of up to MAX_MMSG entries, on
 *     an INET/INET6 socket whose destinations Python has already decided
 *     as allowed (the verdict table below), or a TCP send without
 *     MSG_FASTOPEN (no destination to decide).
 *
 * Anything else -- a destination not in the table (first use, denials,
 * which are logged by Python), unix/netlink/other sockets, a policy naming
 * @host (Python never fills the table then), arguments the kernel would
 * refuse, unreadable guest memory, any failing system call before the call
 * is made -- is handed to Python *before anything is executed*: Python pins
 * the socket and reads the arguments again and decides everything itself,
 * exactly as without this file. So this code can only ever take the
 * decision Python took for the same (socket kind, sockaddr bytes): it has
 * no policy logic of its own to diverge from guestfence.policy.decide.
 *
 * The properties kept from supervisor.py (its docstring says why each one):
 * the socket is pinned with pidfd_getfd and the call made on that copy, so
 * a dup2 meanwhile changes nothing; the arguments are copied once
 * (process_vm_readv) and the bytes decided are the bytes sent; the pid
 * read from is proven to have been the caller's for the read; what is
 * written back (sendmmsg's msg_len) goes through fds that hold the
 * caller's mm, never by its number (struct guest_mm); the call is
 * made with exactly the name decided (NULL for a TCP send without
 * MSG_FASTOPEN); MSG_ZEROCOPY is stripped and MSG_NOSIGNAL added (a send
 * that fails with EPIPE is answered by Python, which owes the caller its
 * SIGPIPE: supervisor._Call.aim_sigpipe); every notification is answered
 * exactly once, never CONTINUEd. Unlike supervisor.py, C reads the
 * arguments first and pins the socket after: the decision is on the pair
 * (bytes read, socket pinned) and the call too, whichever came first, and
 * a pidfd kept from before the notification then proves the read was the
 * caller's without NOTIF_ID_VALID (pin() says why).
 *
 * Kept across calls: a pidfd per guest task (PIDFD_SLOTS of them, replaced
 * on collision), instead of pidfd_open + close per call; and per handler
 * thread what a socket is, by its cookie (socket_kind() says why that
 * cannot describe another socket).
 *
 * Why a stale pidfd cannot reach the wrong task: a pidfd names a struct
 * pid, never a number. With PIDFD_THREAD it names one thread; once that
 * thread has exited pidfd_getfd fails (ESRCH) even if the number is reused,
 * and the entry is replaced. On the leader path (no PIDFD_THREAD, Linux <
 * 6.9) only a thread-group leader is cached (pidfd_open(tid, 0) fails for
 * any other thread, which is then handed to Python): while the cached
 * process lives its leader's pid number stays allocated (even as a zombie
 * leader), so a live caller with that number is that process's leader.
 * The caller had its number when NOTIF_RECV returned it; a pidfd that had
 * a task both before that and at pidfd_getfd held the number all along, so
 * it names the caller (pin()); one opened later does if NOTIF_ID_VALID
 * then says the caller is still waiting, hence alive.
 * tests/sandbox/test_sandbox_fastpath.py shows it with a recycled pid and
 * with two live processes sharing a slot.
 *
 * The pool of handler threads lives here, under one mutex. Exactly one
 * thread at a time waits in NOTIF_RECV (the receiver); the other idle ones
 * (followers) wait on a condition variable. Why: the kernel wakes every
 * thread waiting in NOTIF_RECV for each notification (a non-exclusive
 * wait) and all but one go back to sleep, so with two idle threads each
 * call cost two wake-ups: 30 us of supervisor CPU per sendto instead of
 * 16 here. The receiver answers what cannot block and receives again, so
 * a datagram send or connect to an allowed destination costs no other
 * thread anything. Before anything that may block -- a stream connect, a
 * stream send, a datagram send on a socket without room (poll says so), a
 * sendmmsg, and whatever Python handles -- it hands the turn to a
 * follower (a futex wake-up, and the two threads' sleeps and wake-ups:
 * about 12 us of CPU per call here), or has Python
 * start a thread (GF_SPAWN) when none is idle (up to max_threads; when none
 * can be started, it handles its call anyway and receives again). So
 * a connect blocked for minutes never delays another thread's call. A
 * thread that finishes a call while MAX_IDLE others are idle exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define PIDFD_THREAD O_EXCL /* Linux 6.9; not in Debian 12's headers */

/* What gf_serve / gf_handle return to Python. */
enum {
    GF_EXIT = 0,    /* this thread leaves the pool */
    GF_LAST = 1,    /* ... and was the last: close the listener */
    GF_PYTHON = 2,  /* the notification in *out is Python's to handle and answer */
    GF_SIGPIPE = 3, /* failed with EPIPE, not answered: Python answers and raises SIGPIPE (supervisor._Call) */
    GF_SPAWN = 4,   /* start a handler thread (already counted: it takes the turn), then gf_handle(out) */
    GF_DONE = 5,    /* answered */
};

#if defined(__x86_64__)
#define ARCH_NATIVE AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH_NATIVE AUDIT_ARCH_AARCH64
#endif

/* The same bounds as materialize.py, whose docstring says where each comes from. */
#define MAX_SOCKADDR 128
#define MAX_IOV 1024
#define MAX_DATAGRAM 0xFFFF
#define MAX_STREAM_SEND (256 * 1024)
#define MSG_FASTOPEN_ 0x20000000
#define MAX_MMSG 64             /* a sendmmsg of more entries is Python's (it batches them) */
#define BATCH_BYTES (256 * 1024) /* what one sendmmsg may copy here, all entries together */

#define MAX_IDLE 4
#define PIDFD_SLOTS 32          /* cached pidfds: fds the supervisor keeps, at most */
#define KIND_SLOTS 64           /* sockets whose kind a thread remembers */
#define TABLE_SLOTS 2048        /* verdict table, open addressing, at most half full */
#define TABLE_MAX (TABLE_SLOTS / 2)

struct verdict {                /* one destination Python decided as allowed */
    uint8_t used, connect, raw_len, exec_len;
    int domain, type, protocol;
    unsigned char raw[MAX_SOCKADDR];   /* the guest's sockaddr bytes: the key */
    unsigned char exec[MAX_SOCKADDR];  /* what to pass (verdict.executed_name) */
};

struct pidslot {
    pthread_mutex_t lock;       /* held across pidfd_getfd: no one closes the pidfd meanwhile */
    pid_t tid;
    int pidfd;
    uint64_t opened;            /* gf->opens just after pidfd_open: see pin() */
};

struct gf {
    int listener, thread_pidfds, procmap_query, max_control, max_threads;
    pthread_mutex_t pool;
    pthread_cond_t turn;        /* followers wait here for the receiver's turn */
    int threads, followers, receiving, closing;
    int returning;              /* threads done with a blocking call, about to answer it and wait */
    uint64_t opens;             /* pidfds opened so far (atomic) */
    pthread_mutex_t table_lock;
    int entries;
    struct verdict table[TABLE_SLOTS];
    struct pidslot pids[PIDFD_SLOTS];
};

/* struct msghdr as the guest's memory holds it (x86-64, aarch64). */
struct guest_msghdr {
    uint64_t name;
    int32_t name_len, pad;
    uint64_t iov, iov_len, control, control_len;
    int32_t flags, pad2;
};

struct guest_mmsghdr {
    struct guest_msghdr hdr;
    uint32_t len, pad;
};

struct kind { int domain, type, protocol; };

struct known_kind {             /* what a socket is, by its cookie (see socket_kind) */
    uint64_t cookie;            /* 0: empty (the kernel's cookies start at 1) */
    struct kind kind;
};

/* One handler thread's buffers, allocated once per thread. */
struct gf_thread {
    struct known_kind kinds[KIND_SLOTS];
    struct iovec local[MAX_IOV], remote[MAX_IOV];
    unsigned char guest_iov[MAX_IOV * 16];
    unsigned char name[MAX_SOCKADDR];
    unsigned char *control;     /* max_control bytes */
    unsigned char payload[MAX_STREAM_SEND];
    struct guest_mmsghdr vector[MAX_MMSG];
    unsigned char fixed[BATCH_BYTES];  /* sendmmsg: every entry's name, iovecs, control */
    struct mmsghdr sent[MAX_MMSG];
    struct iovec sent_iov[MAX_MMSG];
    unsigned char exec[MAX_MMSG][MAX_SOCKADDR];
};

struct gf *gf_new(int listener, int thread_pidfds, int procmap_query, int max_control, int max_threads, int threads)
{
    struct gf *gf = calloc(1, sizeof *gf);
    if (!gf)
        return NULL;
    gf->listener = listener;
    gf->thread_pidfds = thread_pidfds;
    gf->procmap_query = procmap_query;
    gf->max_control = max_control;
    gf->max_threads = max_threads;
    gf->threads = threads;
    pthread_mutex_init(&gf->pool, NULL);
    pthread_cond_init(&gf->turn, NULL);
    pthread_mutex_init(&gf->table_lock, NULL);
    for (int i = 0; i < PIDFD_SLOTS; i++) {
        pthread_mutex_init(&gf->pids[i].lock, NULL);
        gf->pids[i].pidfd = -1;
    }
    return gf;
}

/* After the last thread left (GF_LAST): nothing uses gf any more. */
void gf_free(struct gf *gf)
{
    for (int i = 0; i < PIDFD_SLOTS; i++)
        if (gf->pids[i].pidfd >= 0)
            close(gf->pids[i].pidfd);
    free(gf);
}

struct gf_thread *gf_thread_new(struct gf *gf)
{
    struct gf_thread *t = malloc(sizeof *t);
    if (t)
        memset(t->kinds, 0, sizeof t->kinds);
    if (t && !(t->control = malloc(gf->max_control > 0 ? gf->max_control : 1))) {
        free(t);
        t = NULL;
    }
    return t; /* NULL: this thread hands every call to Python */
}

void gf_thread_free(struct gf_thread *t)
{
    if (t) {
        free(t->control);
        free(t);
    }
}

/* ---- the verdict table: filled by Python (gf_allow), read by handler threads ---- */

static uint32_t key_hash(int domain, int type, int protocol, int connect, const unsigned char *raw, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    int head[4] = {domain, type, protocol, connect};
    const unsigned char *p = (const unsigned char *)head;
    for (size_t i = 0; i < sizeof head; i++)
        h = (h ^ p[i]) * 16777619u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ raw[i]) * 16777619u;
    return h;
}

static int key_equal(const struct verdict *v, int domain, int type, int protocol, int connect,
                     const unsigned char *raw, size_t len)
{
    return v->domain == domain && v->type == type && v->protocol == protocol && v->connect == connect &&
           v->raw_len == len && memcmp(v->raw, raw, len) == 0;
}

/* Remember that Python allowed sending to ``raw`` (executing ``exec``) on this kind of socket. */
void gf_allow(struct gf *gf, int domain, int type, int protocol, int connect, const unsigned char *raw,
              size_t raw_len, const unsigned char *exec, size_t exec_len)
{
    if (raw_len > MAX_SOCKADDR || exec_len > MAX_SOCKADDR)
        return;
    pthread_mutex_lock(&gf->table_lock);
    if (gf->entries >= TABLE_MAX) { /* as supervisor.py's own cache: start again */
        memset(gf->table, 0, sizeof gf->table);
        gf->entries = 0;
    }
    uint32_t i = key_hash(domain, type, protocol, connect, raw, raw_len) % TABLE_SLOTS;
    while (gf->table[i].used && !key_equal(&gf->table[i], domain, type, protocol, connect, raw, raw_len))
        i = (i + 1) % TABLE_SLOTS;
    struct verdict *v = &gf->table[i];
    if (!v->used) {
        gf->entries++;
        *v = (struct verdict){.used = 1, .connect = connect, .raw_len = raw_len, .exec_len = exec_len,
                              .domain = domain, .type = type, .protocol = protocol};
        memcpy(v->raw, raw, raw_len);
        memcpy(v->exec, exec, exec_len);
    }
    pthread_mutex_unlock(&gf->table_lock);
}

/* Copy into ``exec`` the name to pass for an allowed ``raw``; its length, or -1: ask Python. */
static int lookup(struct gf *gf, int domain, int type, int protocol, int connect, const unsigned char *raw,
                  size_t len, unsigned char *exec)
{
    int found = -1;
    pthread_mutex_lock(&gf->table_lock);
    uint32_t i = key_hash(domain, type, protocol, connect, raw, len) % TABLE_SLOTS;
    for (; gf->table[i].used; i = (i + 1) % TABLE_SLOTS) {
        if (key_equal(&gf->table[i], domain, type, protocol, connect, raw, len)) {
            found = gf->table[i].exec_len;
            memcpy(exec, gf->table[i].exec, found);
            break;
        }
    }
    pthread_mutex_unlock(&gf->table_lock);
    return found;
}

/* ---- pinning the guest's socket ---- */

static int open_pidfd(struct gf *gf, pid_t tid)
{
    return syscall(SYS_pidfd_open, tid, gf->thread_pidfds ? PIDFD_THREAD : 0);
}

/*
 * Our copy of the caller's fd ``target``, or -1 (Python then finds the
 * errno). Called after the caller's arguments were read by its number
 * (process_vm_readv): *proven says whether this pidfd_getfd also proves
 * that number was the caller's for the read, so that NOTIF_ID_VALID need
 * not say it. It does when the slot's pidfd was opened before the
 * notification was received (``received_after``: gf->opens read before
 * NOTIF_RECV). Why: a pidfd names a struct pid, which keeps its number
 * while a task is attached to it and never gets a task again once it has
 * none (the number is then freed). The pidfd had a task when it was opened
 * for ``tid`` and has one now (pidfd_getfd would fail, ESRCH); so ``tid``
 * was that struct pid's from before NOTIF_RECV -- when the caller had
 * ``tid`` -- until now, through the read: the read was the caller's
 * memory, and this is the caller's fd. A pidfd opened after NOTIF_RECV
 * (here, on first use or after ESRCH) may name a task that took the
 * number of a caller that died since: NOTIF_ID_VALID after it proves the
 * caller alive, as before.
 * One task can take a struct pid over without the number being freed:
 * when another thread of the caller's process execs, it kills the caller
 * and takes the leader's struct pid (de_thread). A leader caller's read
 * and fd may then be the new program's. That program is the caller's own
 * process, under the same filter and credentials (no_new_privs), so what
 * is decided and made is still one allowed call on a socket inside the
 * sandbox, on bytes the sandbox could have written itself; the answer then
 * finds the caller gone.
 */
static int pin(struct gf *gf, pid_t tid, int target, uint64_t received_after, int *proven)
{
    struct pidslot *slot = &gf->pids[(uint32_t)tid % PIDFD_SLOTS];
    int fd = -1;
    *proven = 0;
    pthread_mutex_lock(&slot->lock);
    if (slot->pidfd >= 0 && slot->tid == tid) {
        fd = syscall(SYS_pidfd_getfd, slot->pidfd, target, 0);
        *proven = fd >= 0 && slot->opened <= received_after;
        if (fd >= 0 || errno != ESRCH)
            goto out; /* pinned, or the guest's own bad fd */
    }
    /* no entry, another task's, or one whose task has exited: replace it */
    if (slot->pidfd >= 0)
        close(slot->pidfd);
    slot->pidfd = open_pidfd(gf, tid);  /* leader path: fails for a non-leader thread */
    slot->tid = tid;
    slot->opened = __atomic_add_fetch(&gf->opens, 1, __ATOMIC_SEQ_CST);
    if (slot->pidfd >= 0)
        fd = syscall(SYS_pidfd_getfd, slot->pidfd, target, 0);
out:
    pthread_mutex_unlock(&slot->lock);
    return fd;
}

/* ---- reading the guest's memory ---- */

/* Read ``count`` pieces (t->remote into t->local) of ``total`` bytes: 0, or -1 on any fault. */
static int read_guest(struct gf_thread *t, pid_t pid, int count, size_t total)
{
    if (total == 0)
        return 0;
    ssize_t got = process_vm_readv(pid, t->local, count, t->remote, count, 0);
    return got == (ssize_t)total ? 0 : -1;
}

/* ---- writing the caller's memory ---- */

/*
 * The caller's memory as it is now, for the results a call writes back
 * (sendmmsg's msg_len): /proc/TID/mem to write it, /proc/TID/maps to ask
 * which of it the caller itself could write. Each fd holds the mm of the
 * task that had the number TID when it was opened, whatever takes the
 * number later, and fails (nothing written, ESRCH) once that mm is gone.
 * Opened after the arguments were read and before the socket is pinned,
 * they are proven the caller's as the read is (pin_caller): the number
 * was the caller's from NOTIF_RECV until then. Why not process_vm_writev
 * by number, as the reads: a read by number is checked afterwards and
 * thrown away if the number had changed hands; a write cannot be taken
 * back, and the lengths are written after a send that may wait for
 * minutes, by which time a killed caller's number may be another
 * process's, outside the sandbox (tests/sandbox/test_sandbox_write_back.py).
 */
struct guest_mm {
    int mem, maps;
};

/* open(path, flags) with CAP_DAC_OVERRIDE for this thread if it is permitted:
 * /proc/TID/mem is 0600, owned by the guest's uid when it is dumpable, and a
 * root supervisor's handler thread keeps no DAC override (supervisor.py). */
static int open_overriding(const char *path, int flags)
{
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[2];
    if (syscall(SYS_capget, &header, caps) != 0 || !(caps[0].permitted & (1u << CAP_DAC_OVERRIDE))) {
        errno = EACCES;
        return -1;
    }
    uint32_t effective = caps[0].effective;
    caps[0].effective |= 1u << CAP_DAC_OVERRIDE;
    if (syscall(SYS_capset, &header, caps) != 0)
        return -1;
    int fd = open(path, flags), error = errno;
    caps[0].effective = effective;
    if (syscall(SYS_capset, &header, caps) != 0)
        abort(); /* a handler thread never goes on with a capability it should not have */
    errno = error;
    return fd;
}

/* 0, or -1 with both fds closed (-1). */
static int open_mm(pid_t tid, struct guest_mm *mm)
{
    char path[32];
    snprintf(path, sizeof path, "/proc/%d/mem", tid);
    mm->mem = open(path, O_WRONLY | O_CLOEXEC);
    if (mm->mem < 0 && errno == EACCES)
        mm->mem = open_overriding(path, O_WRONLY | O_CLOEXEC);
    snprintf(path, sizeof path, "/proc/%d/maps", tid);
    mm->maps = mm->mem < 0 ? -1 : open(path, O_RDONLY | O_CLOEXEC);
    if (mm->maps < 0 && mm->mem >= 0) {
        close(mm->mem);
        mm->mem = -1;
    }
    return mm->maps < 0 ? -1 : 0;
}

static void close_mm(struct guest_mm *mm)
{
    if (mm->mem >= 0)
        close(mm->mem);
    if (mm->maps >= 0)
        close(mm->maps);
}

/* PROCMAP_QUERY (Linux 6.11): the mapping at an address, from /proc/TID/maps. */
struct procmap_query {
    uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define PROCMAP_QUERY _IOWR('f', 17, struct procmap_query)
#define PROCMAP_QUERY_VMA_WRITABLE 0x02

/* The end of the run of mappings the caller may write (PROT_WRITE) from ``addr``
 * on, stopping at ``limit``: ``addr`` itself if it is in none. Why ask, rather
 * than write and see: a write to /proc/TID/mem is a debugger's (FOLL_FORCE),
 * which also succeeds in a read-only private mapping, where the kernel's own
 * store of a msg_len fails (EFAULT). ``query``: PROCMAP_QUERY (Linux 6.11),
 * one ioctl per mapping; else the text of the maps file, read up to ``limit``
 * from where the fd stands: once per open_mm, from its start (a second
 * call on the same fd would need an lseek to 0, as kernel.py's does). */
static uint64_t writable_end(int maps, int query, uint64_t addr, uint64_t limit)
{
    struct procmap_query q = {.size = sizeof q};
    while (query && addr < limit) {
        q.query_addr = addr;
        if (ioctl(maps, PROCMAP_QUERY, &q) != 0 || !(q.vma_flags & PROCMAP_QUERY_VMA_WRITABLE))
            return addr; /* read-only; or ENOENT: no mapping there; ESRCH: the mm is gone */
        addr = q.vma_end;
    }
    if (query)
        return addr;
    char text[4096];
    uint64_t start = 0, end = 0;
    int field = 0, column = 0, writable = 0;
    ssize_t got;
    while ((got = read(maps, text, sizeof text)) > 0) {
        for (ssize_t i = 0; i < got; i++) { /* "start-end perms ...\n", in ascending order */
            char c = text[i];
            if (c == '\n') {
                if (start > addr)
                    return addr; /* a gap */
                if (end > addr) {
                    if (!writable)
                        return addr;
                    addr = end;
                    if (addr >= limit)
                        return addr;
                }
                start = end = 0;
                field = column = writable = 0;
            } else if (field < 2) {
                uint64_t *value = field ? &end : &start;
                if (c == '-' || c == ' ')
                    field++;
                else
                    *value = *value * 16 + (c <= '9' ? c - '0' : c - 'a' + 10);
            } else if (field == 2) {
                writable |= column++ == 1 && c == 'w';
                field += c == ' ';
            }
        }
    }
    return addr;
}

/*
 * How many of the ``count`` msg_len fields of the vector at ``vector`` the
 * caller could store into, from the first: those in mappings it may write,
 * in pages a write reaches (a file mapping's page past the end of the file,
 * a guard page: the store faults there too). Each page is tried by writing
 * back the value one of its fields holds (t->vector, read above): invisible
 * to the guest. 4096 bytes at a time, which is a page or part of one.
 */
static uint32_t storable(struct gf *gf, struct gf_thread *t, const struct guest_mm *mm, uint64_t vector,
                         uint32_t count)
{
    const uint64_t first = vector + offsetof(struct guest_mmsghdr, len);
    uint64_t end = writable_end(mm->maps, gf->procmap_query, first,
                                first + (uint64_t)(count - 1) * sizeof *t->vector + 4);
    uint64_t tried = first; /* the pages below this one have been written */
    uint32_t i = 0;
    for (; i < count; i++) {
        uint64_t field = first + (uint64_t)i * sizeof *t->vector;
        if (field + 4 > end)
            break;
        if (field + 4 > tried) {
            if (pwrite(mm->mem, &t->vector[i].len, 4, (off_t)field) != 4)
                break;
            tried = ((field + 3) | 4095) + 1;
        }
    }
    return i;
}

static int still_waiting(struct gf *gf, uint64_t id)
{
    return ioctl(gf->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0;
}

static void respond(struct gf *gf, uint64_t id, long value, int error)
{
    struct seccomp_notif_resp resp = {.id = id, .val = value, .error = error ? -error : 0, .flags = 0};
    /* ENOENT: the caller left the call (killed, interrupted); nothing to answer. Any
     * other failure means the listener is unusable: the next NOTIF_RECV says so. */
    ioctl(gf->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

/* Answer. ``returning``: this thread handed its turn off before a blocking call
 * and now comes back to the pool; counted so before the guest thread is woken,
 * since its next call may reach the receiver at once, and a receiver that must
 * hand its turn off then passes it to this thread instead of having Python
 * start one (which would soon exit again). */
static void answer(struct gf *gf, uint64_t id, long value, int error, int returning)
{
    if (returning) {
        pthread_mutex_lock(&gf->pool);
        gf->returning++;
        pthread_mutex_unlock(&gf->pool);
    }
    respond(gf, id, value, error);
}

static int own_flags(int flags)
{
    return (flags & ~MSG_ZEROCOPY) | MSG_NOSIGNAL;
}

/* Control messages that reroute a datagram (materialize.REROUTING_CMSGS): 1 if any. */
static int reroutes(const unsigned char *control, size_t len)
{
    size_t offset = 0;
    while (offset + 16 <= len) {
        uint64_t cmsg_len;
        int level, type;
        memcpy(&cmsg_len, control + offset, 8);
        memcpy(&level, control + offset + 8, 4);
        memcpy(&type, control + offset + 12, 4);
        if (cmsg_len < 16)
            return 0; /* the kernel refuses it (EINVAL) when it parses our copy */
        if ((level == IPPROTO_IP && type == 7) || (level == IPPROTO_IPV6 && (type == 57 || type == 5)))
            return 1;
        if (cmsg_len > len)
            return 0; /* the walk ends here */
        offset += (cmsg_len + 7) & ~(uint64_t)7;
    }
    return 0;
}

/* The payload pieces of one message (``count`` guest iovecs at ``iov``), to be read to
 * ``dst`` and on: appended to t->remote/t->local at *pieces, *total bytes so far.
 * -1 for what Python answers: a length above INT64_MAX (EINVAL), more than
 * MAX_IOV pieces. They are read before the socket's kind is known (see pin):
 * cut at MAX_STREAM_SEND, as a stream send is (a short send); *fits says
 * whether the whole message fits a datagram, which a datagram send must
 * (else EMSGSIZE: Python's to answer). */
static int payload_pieces(struct gf_thread *t, const unsigned char *iov, uint64_t count, unsigned char *dst,
                          int *pieces, size_t *total, int *fits)
{
    size_t size = 0;
    uint64_t whole = 0; /* the message's length, counted up to MAX_DATAGRAM + 1 */
    for (uint64_t i = 0; i < count; i++) {
        uint64_t base, piece;
        memcpy(&base, iov + 16 * i, 8);
        memcpy(&piece, iov + 16 * i + 8, 8);
        if (piece > INT64_MAX)
            return -1;
        whole += piece < MAX_DATAGRAM + 1 - whole ? piece : MAX_DATAGRAM + 1 - whole;
        piece = piece < MAX_STREAM_SEND - size ? piece : MAX_STREAM_SEND - size;
        if (piece == 0)
            continue;
        if (*pieces == MAX_IOV || *total + size + piece > sizeof t->payload)
            return -1;
        t->remote[*pieces] = (struct iovec){(void *)base, piece};
        t->local[*pieces] = (struct iovec){dst + size, piece};
        (*pieces)++;
        size += piece;
    }
    *total += size;
    *fits = whole <= MAX_DATAGRAM;
    return 0;
}

/* ---- the pool ---- */

/* The receiver is about to do what may block: let another thread receive.
 * 1: no follower is idle and Python must start a thread (counted here). */
static int hand_off(struct gf *gf, int may_spawn)
{
    int spawn = 0, wake;
    pthread_mutex_lock(&gf->pool);
    gf->receiving = 0;
    wake = gf->followers > 0;
    if (!wake && may_spawn && !gf->returning && gf->threads < gf->max_threads) {
        /* (a returning thread takes the turn in a moment: no need to start one) */
        gf->threads++;
        spawn = 1;
    }
    pthread_mutex_unlock(&gf->pool);
    /* Signalled after unlocking, so the follower does not wake to a held lock
     * and sleep again on it. A thread that takes the turn meanwhile makes
     * this wake-up a spurious one: the follower sees the turn taken and waits
     * on. */
    if (wake)
        pthread_cond_signal(&gf->turn);
    return spawn;
}

/* Whether a send on ``sock`` may wait: any stream send; a datagram send when
 * the socket has no room (sock_writeable: then the kernel would wait for it). */
static int may_block(int sock, const struct kind *k)
{
    struct pollfd p = {.fd = sock, .events = POLLOUT};
    return k->type == SOCK_STREAM || poll(&p, 1, 0) != 1 || !(p.revents & POLLOUT);
}

/* ---- the three calls ---- */

/* The name to pass for ``raw``: its length (0 with *name NULL for none), or -1: ask Python. */
static int decided_name(struct gf *gf, const struct kind *k, int connect, int flags, const unsigned char *raw,
                        int raw_len, unsigned char *exec, const unsigned char **name)
{
    if (!raw || (k->type == SOCK_STREAM && !connect && !(flags & MSG_FASTOPEN_))) {
        *name = NULL; /* "the connected peer" (supervisor.name_to_use) */
        return 0;
    }
    *name = exec;
    return lookup(gf, k->domain, k->type, k->protocol, connect, raw, raw_len, exec);
}

/*
 * What the pinned socket is -- domain, type, protocol -- from the kernel,
 * never from the guest: 0, or -1 (not a socket: Python's). Asked once per
 * socket and remembered by its cookie (SO_COOKIE: a 64-bit number the
 * kernel gives each socket once, from one counter for every network
 * namespace, and never gives again, so a closed
 * socket's entry cannot describe a new one, whatever fd number, inode
 * number or thread the new one has), one getsockopt instead of three.
 * A socket's type and protocol never change; its domain changes only by
 * IPV6_ADDRFORM (INET6 to INET), which the filter refuses in the sandbox.
 * Done outside on a shared socket, it leaves C deciding as for INET6 an
 * INET socket -- as the getsockopts did when it came between them and the
 * call: a decided AF_INET name then means the same, "the peer" (no name)
 * too, and an AF_INET6 name fails (EAFNOSUPPORT).
 */
static int socket_kind(struct gf_thread *t, int sock, struct kind *k)
{
    uint64_t cookie;
    socklen_t size = sizeof cookie;
    if (getsockopt(sock, SOL_SOCKET, SO_COOKIE, &cookie, &size) != 0 || cookie == 0)
        return -1;
    struct known_kind *known = &t->kinds[cookie % KIND_SLOTS];
    if (known->cookie == cookie) {
        *k = known->kind;
        return 0;
    }
    int *values[3] = {&k->domain, &k->type, &k->protocol}, options[3] = {SO_DOMAIN, SO_TYPE, SO_PROTOCOL};
    for (int i = 0; i < 3; i++) {
        size = sizeof(int);
        if (getsockopt(sock, SOL_SOCKET, options[i], values[i], &size) != 0)
            return -1;
    }
    *known = (struct known_kind){.cookie = cookie, .kind = *k};
    return 0;
}

/*
 * The caller's socket, pinned after its arguments were read, and what it is
 * (*k); or -1: Python's (nothing was executed). NOTIF_ID_VALID proves the
 * read was the caller's memory unless pin() did (see there).
 */
static int pin_caller(struct gf *gf, struct gf_thread *t, const struct seccomp_notif *n, uint64_t received_after,
                      struct kind *k)
{
    int proven, sock = pin(gf, n->pid, (int)n->data.args[0], received_after, &proven);
    if (sock < 0)
        return -1;
    if (socket_kind(t, sock, k) != 0 || (k->domain != AF_INET && k->domain != AF_INET6) ||
        (!proven && !still_waiting(gf, n->id))) {
        close(sock); /* unix, netlink, others: local.py */
        return -1;
    }
    return sock;
}

/* Answered (GF_DONE); made, failed with EPIPE and left to Python to answer,
 * since the caller's SIGPIPE goes by a pidfd opened before the answer
 * (GF_SIGPIPE); or handed to Python (GF_PYTHON, GF_SPAWN: nothing was
 * executed). ``receiver``: this thread holds the receiver's turn, to hand off
 * before anything that may block (it no longer holds it after GF_PYTHON, GF_SPAWN,
 * or a hand-off: *receiver is then 0). ``received_after``: see pin(). */
static int act(struct gf *gf, struct gf_thread *t, struct seccomp_notif *n, uint64_t received_after,
               int *receiver)
{
    const __u64 *a = n->data.args;
    const int held = *receiver; /* held the turn: if it is 0 now, it was handed off before blocking */
    unsigned char exec[MAX_SOCKADDR];
    const unsigned char *name;
    struct kind k;
    int name_len, flags = 0, rc = GF_PYTHON, sock = -1;
    long result;

    if (n->data.nr == SYS_connect) {
        int len = (int)a[2];
        if (len < 0 || len > MAX_SOCKADDR)
            goto out;
        t->remote[0] = (struct iovec){(void *)a[1], len};
        t->local[0] = (struct iovec){t->name, len};
        if (read_guest(t, n->pid, 1, len) || (sock = pin_caller(gf, t, n, received_after, &k)) < 0)
            goto out;
        if ((name_len = decided_name(gf, &k, 1, 0, t->name, len, exec, &name)) < 0)
            goto out;
        /* A datagram connect only sets the peer (route lookup, no packet): it never waits. */
        if (*receiver && k.type != SOCK_DGRAM && (*receiver = 0, hand_off(gf, 1))) {
            rc = GF_SPAWN;
            goto out;
        }
        result = connect(sock, (const struct sockaddr *)name, name_len);
    } else if (n->data.nr == SYS_sendto) {
        int len = (int)a[5];
        size_t payload = a[2] < MAX_STREAM_SEND ? a[2] : MAX_STREAM_SEND; /* a stream's short send */
        flags = (int)a[3];
        if (len < 0 || len > MAX_SOCKADDR)
            goto out;
        t->remote[0] = (struct iovec){(void *)a[4], len};
        t->local[0] = (struct iovec){t->name, len};
        t->remote[1] = (struct iovec){(void *)a[1], payload};
        t->local[1] = (struct iovec){t->payload, payload};
        if (read_guest(t, n->pid, 2, len + payload) || (sock = pin_caller(gf, t, n, received_after, &k)) < 0)
            goto out;
        if (k.type != SOCK_STREAM && a[2] > MAX_DATAGRAM)
            goto out; /* EMSGSIZE */
        if ((name_len = decided_name(gf, &k, 0, flags, t->name, len, exec, &name)) < 0)
            goto out;
        if (*receiver && may_block(sock, &k) && (*receiver = 0, hand_off(gf, 1))) {
            rc = GF_SPAWN;
            goto out;
        }
        result = sendto(sock, t->payload, payload, own_flags(flags), (const struct sockaddr *)name, name_len);
    } else { /* sendmsg: the msghdr; its name, iovecs and control; the payload pieces */
        struct guest_msghdr h;
        flags = (int)a[2];
        t->remote[0] = (struct iovec){(void *)a[1], sizeof h};
        t->local[0] = (struct iovec){&h, sizeof h};
        if (read_guest(t, n->pid, 1, sizeof h))
            goto out;
        int len = h.name ? h.name_len : 0;
        if (len < 0 || h.iov_len > MAX_IOV || h.control_len > (uint64_t)gf->max_control)
            goto out;
        len = len < MAX_SOCKADDR ? len : MAX_SOCKADDR;
        t->remote[0] = (struct iovec){(void *)h.name, len};
        t->local[0] = (struct iovec){t->name, len};
        t->remote[1] = (struct iovec){(void *)h.iov, h.iov_len * 16};
        t->local[1] = (struct iovec){t->guest_iov, h.iov_len * 16};
        t->remote[2] = (struct iovec){(void *)h.control, h.control_len};
        t->local[2] = (struct iovec){t->control, h.control_len};
        if (read_guest(t, n->pid, 3, len + h.iov_len * 16 + h.control_len))
            goto out;
        size_t total = 0;
        int pieces = 0, fits;
        if (payload_pieces(t, t->guest_iov, h.iov_len, t->payload, &pieces, &total, &fits))
            goto out;
        if (read_guest(t, n->pid, pieces, total) || reroutes(t->control, h.control_len) ||
            (sock = pin_caller(gf, t, n, received_after, &k)) < 0)
            goto out;
        if (k.type != SOCK_STREAM && !fits)
            goto out; /* EMSGSIZE */
        if ((name_len = decided_name(gf, &k, 0, flags, len ? t->name : NULL, len, exec, &name)) < 0)
            goto out;
        if (*receiver && may_block(sock, &k) && (*receiver = 0, hand_off(gf, 1))) {
            rc = GF_SPAWN;
            goto out;
        }
        struct iovec iov = {t->payload, total};
        struct msghdr m = {.msg_name = (void *)name, .msg_namelen = name_len, .msg_iov = &iov, .msg_iovlen = 1,
                           .msg_control = h.control_len ? t->control : NULL, .msg_controllen = h.control_len};
        result = sendmsg(sock, &m, own_flags(flags));
    }
    int error = result < 0 ? errno : 0;
    /* The kernel signals only a send's EPIPE; a connect can fail with EPIPE
     * (a reset left in sk_err) and never raises SIGPIPE. */
    rc = error == EPIPE && n->data.nr != SYS_connect && !(flags & MSG_NOSIGNAL) ? GF_SIGPIPE : GF_DONE;
    if (rc == GF_DONE)
        answer(gf, n->id, result < 0 ? 0 : result, error, held && !*receiver);
out:
    if (sock >= 0)
        close(sock);
    return rc;
}

/*
 * sendmmsg of at most MAX_MMSG entries that fit in BATCH_BYTES, each to a
 * destination Python allowed (anything else is Python's, batched there):
 * the vector; every name, iovec array and control; every payload -- three
 * reads. Then, as supervisor._send_batch: which msg_len fields the caller
 * could store into (the kernel stops at the first it cannot store: so must
 * we, and we cannot once the datagrams are sent), the send, the lengths --
 * written through the caller's mm (struct guest_mm), never by its number.
 * Conventions of act().
 */
static int act_mmsg(struct gf *gf, struct gf_thread *t, struct seccomp_notif *n, uint64_t received_after,
                    int *receiver)
{
    const __u64 *a = n->data.args;
    const int held = *receiver; /* held the turn: if it is 0 now, it was handed off before blocking */
    uint32_t count = (uint32_t)a[2];
    struct kind k;
    struct guest_mm mm = {-1, -1};
    int flags = (int)a[3], rc = GF_PYTHON, pieces = 0, sock = -1, fits = 1;
    size_t fixed = 0, total = 0;
    if (count == 0 || count > MAX_MMSG)
        goto out;
    t->remote[0] = (struct iovec){(void *)a[1], count * sizeof *t->vector};
    t->local[0] = (struct iovec){t->vector, count * sizeof *t->vector};
    if (read_guest(t, n->pid, 1, count * sizeof *t->vector))
        goto out;
    int name_len[MAX_MMSG];
    for (uint32_t i = 0; i < count; i++) { /* materialize._header's checks, and the batch's bound */
        struct guest_msghdr *h = &t->vector[i].hdr;
        name_len[i] = h->name ? h->name_len : 0;
        if (name_len[i] < 0 || h->iov_len > MAX_IOV || h->control_len > (uint64_t)gf->max_control)
            goto out;
        name_len[i] = name_len[i] < MAX_SOCKADDR ? name_len[i] : MAX_SOCKADDR;
        size_t need = name_len[i] + h->iov_len * 16 + h->control_len;
        if (need > sizeof t->fixed - fixed)
            goto out;
        t->remote[3 * i] = (struct iovec){(void *)h->name, name_len[i]};
        t->local[3 * i] = (struct iovec){t->fixed + fixed, name_len[i]};
        t->remote[3 * i + 1] = (struct iovec){(void *)h->iov, h->iov_len * 16};
        t->local[3 * i + 1] = (struct iovec){t->fixed + fixed + name_len[i], h->iov_len * 16};
        t->remote[3 * i + 2] = (struct iovec){(void *)h->control, h->control_len};
        t->local[3 * i + 2] = (struct iovec){t->fixed + fixed + name_len[i] + h->iov_len * 16, h->control_len};
        fixed += need;
    }
    if (read_guest(t, n->pid, 3 * count, fixed))
        goto out;
    struct { unsigned char *name, *iov, *control; size_t start, size; } m[MAX_MMSG];
    for (uint32_t i = 0; i < count; i++) { /* the pointers into t->fixed, before t->local is reused */
        m[i].name = t->local[3 * i].iov_base;
        m[i].iov = t->local[3 * i + 1].iov_base;
        m[i].control = t->local[3 * i + 2].iov_base;
    }
    for (uint32_t i = 0; i < count; i++) {
        struct guest_msghdr *h = &t->vector[i].hdr;
        int entry_fits;
        m[i].start = total;
        if (payload_pieces(t, m[i].iov, h->iov_len, t->payload + total, &pieces, &total, &entry_fits) ||
            reroutes(m[i].control, h->control_len))
            goto out;
        m[i].size = total - m[i].start;
        fits &= entry_fits;
    }
    if (read_guest(t, n->pid, pieces, total) || open_mm(n->pid, &mm) ||
        (sock = pin_caller(gf, t, n, received_after, &k)) < 0)
        goto out; /* (pin_caller proves mm the caller's too: see struct guest_mm) */
    if (k.type != SOCK_STREAM && !fits)
        goto out; /* EMSGSIZE */
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *name;
        struct guest_msghdr *h = &t->vector[i].hdr;
        int len = decided_name(gf, &k, 0, flags, name_len[i] ? m[i].name : NULL, name_len[i], t->exec[i], &name);
        if (len < 0)
            goto out;
        t->sent_iov[i] = (struct iovec){t->payload + m[i].start, m[i].size};
        t->sent[i] = (struct mmsghdr){.msg_hdr = {.msg_name = (void *)name, .msg_namelen = len,
                                                  .msg_iov = &t->sent_iov[i], .msg_iovlen = 1,
                                                  .msg_control = h->control_len ? m[i].control : NULL,
                                                  .msg_controllen = h->control_len}};
    }
    if (storable(gf, t, &mm, a[1], count) != count)
        goto out; /* Python sends the entries before the first, as the kernel would */
    if (*receiver && (*receiver = 0, hand_off(gf, 1))) { /* 64 datagrams may fill the socket's buffer */
        rc = GF_SPAWN;
        goto out;
    }
    int sent = sendmmsg(sock, t->sent, count, own_flags(flags));
    int error = sent < 0 ? errno : 0;
    /* Through mm, never by number: the caller may have died meanwhile (then
     * the writes fail). A field that held its length when it was read is left
     * as it is (a vector sent again and again): the kernel's store would leave
     * it so, and a guest thread that wrote it since could have written after
     * that store. */
    for (int i = 0; i < sent; i++) {
        uint64_t field = a[1] + (uint64_t)i * sizeof *t->vector + offsetof(struct guest_mmsghdr, len);
        if (t->sent[i].msg_len != t->vector[i].len &&
            pwrite(mm.mem, &t->sent[i].msg_len, 4, (off_t)field) != 4)
            break;
    }
    rc = error == EPIPE && !(flags & MSG_NOSIGNAL) ? GF_SIGPIPE : GF_DONE;
    if (rc == GF_DONE)
        answer(gf, n->id, sent < 0 ? 0 : sent, error, held && !*receiver);
out:
    if (sock >= 0)
        close(sock);
    close_mm(&mm);
    return rc;
}

/* Handle one notification: answered here, or handed to Python (see act). */
static int handle(struct gf *gf, struct gf_thread *t, struct seccomp_notif *n, uint64_t received_after,
                  int *receiver)
{
    int nr = n->data.nr;
    if (!t || n->data.arch != ARCH_NATIVE ||
        (nr != SYS_connect && nr != SYS_sendto && nr != SYS_sendmsg && nr != SYS_sendmmsg) ||
        ((uint32_t)n->data.args[0] & 0x80000000u))
        return GF_PYTHON;
    return nr == SYS_sendmmsg ? act_mmsg(gf, t, n, received_after, receiver) : act(gf, t, n, received_after, receiver);
}

/* Handle a notification with no turn to hand off (after GF_SPAWN), received
 * before gf->opens could have been read: no kept pidfd proves its caller. */
int gf_handle(struct gf *gf, struct gf_thread *t, struct seccomp_notif *n)
{
    int receiver = 0;
    return handle(gf, t, n, 0, &receiver);
}

static int orphaned(struct gf *gf)
{
    struct pollfd p = {.fd = gf->listener, .events = POLLIN};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLNVAL | POLLERR));
}

/* This thread leaves the pool (pool lock held): GF_LAST if it was the last. */
static int leave(struct gf *gf)
{
    if (!gf->receiving && gf->followers)
        pthread_cond_signal(&gf->turn); /* the turn is free: not with this thread */
    int last = --gf->threads == 0;
    pthread_mutex_unlock(&gf->pool);
    return last ? GF_LAST : GF_EXIT;
}

/* A thread GF_SPAWN counted could not be started: uncount it. */
void gf_unspawn(struct gf *gf)
{
    pthread_mutex_lock(&gf->pool);
    gf->threads--;
    pthread_mutex_unlock(&gf->pool);
}

/*
 * A handler thread's loop: wait for the turn, receive, handle, answer,
 * until something needs Python (the return value says what). ``back``:
 * the thread returns from Python (it does not hold the turn), rather than
 * starting.
 */
int gf_serve(struct gf *gf, struct gf_thread *t, struct seccomp_notif *out, int back)
{
    int returning = 0;
    for (;;) {
        pthread_mutex_lock(&gf->pool);
        gf->returning -= returning;
        if (back && gf->followers + gf->receiving >= MAX_IDLE)
            return leave(gf); /* finished a call while enough others are idle */
        back = 1;
        gf->followers++;
        while (gf->receiving && !gf->closing)
            pthread_cond_wait(&gf->turn, &gf->pool);
        gf->followers--;
        if (gf->closing)
            return leave(gf);
        gf->receiving = 1;
        pthread_mutex_unlock(&gf->pool);
        int receiver = 1, rc = GF_DONE;
        while (rc == GF_DONE && receiver) {
            memset(out, 0, sizeof *out); /* the kernel insists on a zeroed struct */
            uint64_t received_after = __atomic_load_n(&gf->opens, __ATOMIC_SEQ_CST); /* see pin() */
            if (ioctl(gf->listener, SECCOMP_IOCTL_NOTIF_RECV, out) == 0) {
                rc = handle(gf, t, out, received_after, &receiver);
            } else if ((errno != EINTR && errno != ENOENT) || orphaned(gf)) {
                pthread_mutex_lock(&gf->pool); /* the listener is done: every thread leaves */
                gf->closing = 1;
                gf->receiving = 0;
                pthread_cond_broadcast(&gf->turn);
                return leave(gf);
            }
        }
        returning = rc == GF_DONE; /* a call that could block, done after a hand-off (see answer) */
        if (returning)
            continue;
        if (!receiver)
            return rc; /* GF_SPAWN, or GF_SIGPIPE after a hand-off */
        /* GF_PYTHON or GF_SIGPIPE while holding the turn: Python's part may block */
        if (hand_off(gf, rc == GF_PYTHON))
            return GF_SPAWN; /* then gf_handle(out) hands it to Python again */
        return rc;
    }
}
