/*
 * guestfence-launch: the sandboxed child's first program. It loads the
 * seccomp filter, hands the listener to the supervisor, drops capabilities
 * and execs the command, keeping the pid.
 *
 *     guestfence-launch SOCKET_FD CMD ARGS...     (started by sandbox/spawn.py, never by hand)
 *
 * Why C and not Python: everything that runs before the filter is loaded
 * runs unfiltered, so nothing the guest controls may influence it. A Python
 * launcher reads its working directory, PYTHONPATH, PYTHONHOME, .pth files
 * and the locale before its first line runs; a static C program started
 * with an empty environment (spawn.py does that) reads nothing but what the
 * supervisor writes on SOCKET_FD: no dynamic loader (LD_PRELOAD,
 * LD_LIBRARY_PATH, GLIBC_TUNABLES), no search path, no locale. It starts in
 * about a millisecond, where an interpreter took tens.
 *
 * Protocol on SOCKET_FD (one end of a socketpair, native byte order):
 *   supervisor -> us:  uint32 instruction count, uint32 environment bytes,
 *                      uint32 flags (1: keep capabilities),
 *                      the BPF program (libseccomp's export, 8 bytes an
 *                      instruction), the command's environment as
 *                      "NAME=VALUE\0" strings.
 *   us -> supervisor:  "ok FD\n" once the filter is loaded (FD is our number
 *                      for the listener; the supervisor copies it with
 *                      pidfd_getfd: passing it with SCM_RIGHTS would be a
 *                      sendmsg waiting for the very supervisor it is meant
 *                      for), or "error MESSAGE\n" (then we exit 126).
 *   supervisor -> us:  "g" once it serves the listener.
 * Then we close our listener (it lives only in the supervisor, so when the
 * supervisor dies the kernel fails every trapped call) and exec CMD with the
 * environment received, searching the command's own PATH. Exec failure:
 * 127 when not found, else 126, as a shell says.
 *
 * Signal dispositions and the signal mask are left as spawn.py's Popen set
 * them (it restores SIGPIPE and SIGXFSZ): this program changes none.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FLAG_KEEP_CAPS 1u
#define MAX_ENVIRONMENT_BYTES (64u << 20)

/*
 * The capabilities a root command keeps unless told to keep all: what
 * ordinary root programs use (change owner and user, bind low ports, signal,
 * chroot) and none that reaches the supervisor (SYS_PTRACE, SYS_ADMIN,
 * DAC_OVERRIDE, DAC_READ_SEARCH, CHECKPOINT_RESTORE: pidfd_getfd, ptrace,
 * /proc/PID/mem of a non-dumpable process), goes around the filter or the
 * network stack (NET_ADMIN, NET_RAW, BPF, PERFMON, SYS_MODULE, SYS_RAWIO,
 * MKNOD), or hands capabilities on (SETPCAP, SETFCAP). A list of what is
 * kept, not of what is dropped, so a capability a later kernel adds is
 * dropped too.
 */
static const int KEPT_CAPABILITIES[] = {
    CAP_CHOWN, CAP_FOWNER, CAP_FSETID, CAP_KILL, CAP_SETGID, CAP_SETUID,
    CAP_NET_BIND_SERVICE, CAP_SYS_CHROOT, CAP_AUDIT_WRITE,
};

extern char **environ;
static int control = -1;

static int fail(const char *what, int err) {
    dprintf(control, "error %s: %s\n", what, strerror(err));
    return 126;
}

/* Read exactly n bytes; EOF before that means the supervisor went away. */
static int read_exactly(void *buffer, size_t n) {
    char *at = buffer;
    while (n > 0) {
        ssize_t got = read(control, at, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0) {
            errno = got == 0 ? EPIPE : errno;
            return -1;
        }
        at += got;
        n -= (size_t)got;
    }
    return 0;
}

/* "NAME=VALUE\0..." -> a NULL-terminated array pointing into block. */
static char **split_environment(char *block, size_t size) {
    size_t count = 0;
    for (size_t i = 0; i < size; i++)
        count += block[i] == '\0';
    char **list = calloc(count + 1, sizeof *list);
    if (list == NULL)
        return NULL;
    for (size_t i = 0, n = 0; n < count; n++) {
        list[n] = block + i;
        i += strlen(block + i) + 1;
    }
    return list;
}

/*
 * Lower bounding, ambient, inheritable, permitted and effective sets to
 * KEPT_CAPABILITIES. Without CAP_SETPCAP (an unprivileged caller) the
 * bounding set cannot be lowered, and need not be: no_new_privs, set
 * before, already keeps an exec from adding to the permitted set.
 */
static int drop_capabilities(void) {
    uint64_t keep = 0;
    for (size_t i = 0; i < sizeof KEPT_CAPABILITIES / sizeof *KEPT_CAPABILITIES; i++)
        keep |= UINT64_C(1) << KEPT_CAPABILITIES[i];
    struct __user_cap_header_struct header = {.version = _LINUX_CAPABILITY_VERSION_3};
    struct __user_cap_data_struct sets[2];
    if (syscall(SYS_capget, &header, sets) != 0)
        return -1;
    int may_lower_bounding = (sets[0].effective >> CAP_SETPCAP) & 1;
    for (int cap = 0; cap < 64 && prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++) {
        if ((keep >> cap) & 1)
            continue;
        if (may_lower_bounding && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0)
            return -1;
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_LOWER, cap, 0, 0) != 0 && errno != EINVAL)
            return -1;
    }
    for (int i = 0; i < 2; i++) {
        uint32_t mask = (uint32_t)(keep >> (32 * i));
        sets[i].effective &= mask;
        sets[i].permitted &= mask;
        sets[i].inheritable &= mask;
    }
    return (int)syscall(SYS_capset, &header, sets);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: guestfence-launch SOCKET_FD CMD ARGS... (started by guestfence, not by hand)\n");
        return 126;
    }
    control = atoi(argv[1]);

    uint32_t head[3];
    if (read_exactly(head, sizeof head) != 0)
        return fail("cannot read the filter", errno);
    uint32_t instructions = head[0], environment_size = head[1], flags = head[2];
    if (instructions == 0 || instructions > BPF_MAXINSNS || environment_size > MAX_ENVIRONMENT_BYTES
        || (flags & ~FLAG_KEEP_CAPS) != 0)
        return fail("malformed launch request", EINVAL);
    struct sock_filter *program = calloc(instructions, sizeof *program);
    char *environment = calloc(environment_size + 1, 1);
    if (program == NULL || environment == NULL)
        return fail("cannot read the filter", ENOMEM);
    if (read_exactly(program, instructions * sizeof *program) != 0
        || read_exactly(environment, environment_size) != 0)
        return fail("cannot read the filter", errno);
    if (environment_size > 0 && environment[environment_size - 1] != '\0')
        return fail("malformed environment", EINVAL);
    char **command_environment = split_environment(environment, environment_size);
    if (command_environment == NULL)
        return fail("cannot read the environment", ENOMEM);

    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return fail("cannot set no_new_privs", errno);
    if (!(flags & FLAG_KEEP_CAPS) && drop_capabilities() != 0)
        return fail("cannot drop capabilities", errno);
    struct sock_fprog filter = {.len = (unsigned short)instructions, .filter = program};
    int listener = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &filter);
    if (listener < 0)
        return fail("cannot install the seccomp filter", errno);
    /* From here on every connect and send of ours waits for the supervisor. */

    dprintf(control, "ok %d\n", listener);
    char go = 0;
    if (read_exactly(&go, 1) != 0 || go != 'g')
        return 126;
    close(listener);
    close(control);

    environ = command_environment;
    execvp(argv[2], argv + 2);
    int err = errno;
    fprintf(stderr, "guestfence: %s: %s\n", argv[2], strerror(err));
    return err == ENOENT ? 127 : 126;
}
