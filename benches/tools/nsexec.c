/* nsexec [-n NETNS-PATH] [-i STDIN-FILE] [VAR=VALUE...] PROGRAM [ARG...]
 *
 * The comparison script's launcher: enter a network namespace (setns on this thread, as a
 * CNI plugin does before it forks nft or iptables-restore), take stdin from a file, set
 * environment variables, then exec PROGRAM. Needed because hyperfine -N runs no shell and
 * tools like nft have no --netns option. It costs one extra execve of this small static
 * binary; compare.sh measures that (`nsexec -n NS /bin/true` against `/bin/true`). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage(void) {
    fprintf(stderr, "usage: nsexec [-n NETNS-PATH] [-i STDIN-FILE] [VAR=VALUE...] PROGRAM [ARG...]\n");
    return 125;
}

int main(int argc, char **argv) {
    int i = 1;
    while (i + 1 < argc && argv[i][0] == '-') {
        int fd = open(argv[i + 1], O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            perror(argv[i + 1]);
            return 125;
        }
        if (strcmp(argv[i], "-n") == 0) {
            if (setns(fd, CLONE_NEWNET) != 0) {
                perror("setns");
                return 125;
            }
            close(fd);
        } else if (strcmp(argv[i], "-i") == 0) {
            if (dup2(fd, 0) < 0) {
                perror("dup2");
                return 125;
            }
            close(fd);
        } else {
            return usage();
        }
        i += 2;
    }
    for (; i < argc && strchr(argv[i], '=') != NULL; i++)
        putenv(argv[i]);
    if (i >= argc)
        return usage();
    execv(argv[i], argv + i);
    perror(argv[i]);
    return 127;
}
