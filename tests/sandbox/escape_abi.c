/* Try to connect to 127.0.0.1:PORT through another syscall ABI than the
 * native one, where a filter written for x86-64 numbers would not look.
 *
 *   escape_abi int80|x32 PORT     prints the raw result, exit 0
 *
 * int80: the i386 socketcall(SYS_CONNECT) through int $0x80 (IA32 emulation).
 * x32:   connect with __X32_SYSCALL_BIT set. Build with -no-pie so the
 * static buffers have 32-bit addresses, as int $0x80 needs.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static struct sockaddr_in dst;
static unsigned int args[3];

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int s = socket(AF_INET, SOCK_STREAM, 0);
    dst.sin_family = AF_INET;
    dst.sin_port = htons(atoi(argv[2]));
    dst.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    long r;
    if (strcmp(argv[1], "int80") == 0) {
        args[0] = s;
        args[1] = (unsigned int)(unsigned long)&dst;
        args[2] = sizeof dst;
        __asm__ volatile("int $0x80" : "=a"(r) : "a"(102), "b"(3), "c"(args) : "memory");
    } else {
        r = syscall(0x40000000 | SYS_connect, s, &dst, sizeof dst);
        if (r < 0) r = -errno;
    }
    printf("%ld\n", r);
    return 0;
}
