/* interleave -r RUNS [-w WARMUP] [-p PREPARE] [-s SETTLE_MS] [-o RAW.tsv] ROWS-FILE
 *
 * The comparison script's timer. hyperfine times all runs of one command, then all runs of
 * the next: on a shared VM the machine drifts between those blocks (other builds, the
 * kernel's asynchronous cleanup of deleted namespaces, CPU frequency), and the drift lands
 * in the ratios. This tool interleaves instead: round 1 runs row A, B, C…, round 2 again,
 * and so on, so that every row sees the same machine. The first row of each round rotates
 * (round r starts at row r mod N) so that no row always follows the same one.
 *
 * ROWS-FILE: one row per line, `NAME<TAB>ARGV` with ARGV split on spaces (no shell, no
 * quoting: the script passes paths without spaces). Before every timed run PREPARE is run
 * (through /bin/sh, untimed; e.g. delete and re-create the namespace), then the tool sleeps
 * SETTLE_MS; then the row's program is started (posix_spawn, stdin/stdout/stderr on
 * /dev/null) and waited for: the time from just before the spawn to the end of the wait is
 * the run's time. A run that exits non-zero stops everything (exit 1): a failing command
 * must not be timed as a fast one.
 *
 * Prints, per row, `NAME<TAB>MEDIAN_MS<TAB>P95_MS<TAB>RUNS<TAB>RATIO` (nearest-rank p95;
 * RATIO: the median over rounds of this row's time divided by the first row's); with -o,
 * every timed run as `ROUND<TAB>NAME<TAB>MS`. Warm-up rounds are run the same way and
 * dropped. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define MAX_ROWS 32
#define MAX_ARGS 64

struct row {
    char *name;
    char *argv[MAX_ARGS + 1];
    double *ms;
    double ratio; /* median of the per-round ratios to the first row */
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Runs argv with the standard streams on /dev/null; returns its wait status or -1. */
static int run(char *const argv[], double *elapsed) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    for (int fd = 0; fd <= 2; fd++)
        posix_spawn_file_actions_addopen(&fa, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0);
    pid_t pid;
    int status = -1;
    double t0 = now_ms();
    int e = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
    if (e == 0 && waitpid(pid, &status, 0) < 0)
        status = -1;
    *elapsed = now_ms() - t0;
    posix_spawn_file_actions_destroy(&fa);
    return e == 0 ? status : -1;
}

static int prepare(const char *cmd, long settle_ms) {
    if (cmd && system(cmd) != 0) {
        fprintf(stderr, "interleave: prepare command failed: %s\n", cmd);
        return -1;
    }
    if (settle_ms > 0) {
        struct timespec ts = {settle_ms / 1000, (settle_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int read_rows(const char *path, struct row *rows, int runs) {
    FILE *f = fopen(path, "r");
    if (!f) {
        perror(path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0 && n < MAX_ROWS) {
        line[strcspn(line, "\n")] = 0;
        char *tab = strchr(line, '\t');
        if (!tab)
            continue;
        *tab = 0;
        struct row *r = &rows[n];
        r->name = strdup(line);
        int a = 0;
        for (char *tok = strtok(tab + 1, " "); tok && a < MAX_ARGS; tok = strtok(NULL, " "))
            r->argv[a++] = strdup(tok);
        r->argv[a] = NULL;
        r->ms = calloc(runs, sizeof(double));
        if (a > 0)
            n++;
    }
    free(line);
    fclose(f);
    return n;
}

int main(int argc, char **argv) {
    int runs = 50, warmup = 3, opt;
    long settle_ms = 0;
    const char *prep = NULL, *raw_path = NULL;
    while ((opt = getopt(argc, argv, "r:w:p:s:o:")) != -1) {
        switch (opt) {
        case 'r': runs = atoi(optarg); break;
        case 'w': warmup = atoi(optarg); break;
        case 'p': prep = optarg; break;
        case 's': settle_ms = atol(optarg); break;
        case 'o': raw_path = optarg; break;
        default: goto usage;
        }
    }
    if (optind + 1 != argc || runs < 1 || warmup < 0)
        goto usage;
    static struct row rows[MAX_ROWS];
    int n = read_rows(argv[optind], rows, runs);
    if (n <= 0)
        goto usage;
    FILE *raw = raw_path ? fopen(raw_path, "w") : NULL;
    for (int round = -warmup; round < runs; round++) {
        for (int k = 0; k < n; k++) {
            struct row *r = &rows[((round + warmup) + k) % n];
            double ms;
            if (prepare(prep, settle_ms) != 0)
                return 1;
            int status = run(r->argv, &ms);
            if (status != 0) {
                fprintf(stderr, "interleave: %s failed (wait status %d): %s\n", r->name,
                        status, r->argv[0]);
                return 1;
            }
            if (round < 0)
                continue;
            r->ms[round] = ms;
            if (raw)
                fprintf(raw, "%d\t%s\t%.4f\n", round, r->name, ms);
        }
        if (round >= 0 && (round + 1) % 10 == 0)
            fprintf(stderr, "  round %d/%d\n", round + 1, runs);
    }
    if (raw)
        fclose(raw);
    /* Per-round ratios to the first row, before the times are sorted. */
    double *ratio = calloc(runs, sizeof(double));
    int p95 = (runs * 95 + 99) / 100 - 1;
    for (int k = n - 1; k >= 0; k--) {
        for (int i = 0; i < runs; i++)
            ratio[i] = rows[k].ms[i] / rows[0].ms[i];
        qsort(ratio, runs, sizeof(double), cmp_double);
        qsort(rows[k].ms, runs, sizeof(double), cmp_double);
        rows[k].ratio = ratio[runs / 2];
    }
    for (int k = 0; k < n; k++)
        printf("%s\t%.4f\t%.4f\t%d\t%.4f\n", rows[k].name, rows[k].ms[runs / 2],
               rows[k].ms[p95], runs, rows[k].ratio);
    free(ratio);
    return 0;
usage:
    fprintf(stderr, "usage: interleave -r RUNS [-w WARMUP] [-p PREPARE] [-s SETTLE_MS] "
                    "[-o RAW.tsv] ROWS-FILE\n");
    return 2;
}
