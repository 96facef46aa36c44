// Where a checkpoint may be written: the checks a program makes on its output path before it starts work
// (what is there now, whether the directory takes new files), and the cleanup of temp files that killed savers
// left behind ("<path>.tmp.<pid>", checkpoint.h).
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

const char *checkpoint_file_kind(unsigned mode) {
    if (S_ISREG(mode)) return "regular file";
    if (S_ISDIR(mode)) return "directory";
    if (S_ISFIFO(mode)) return "FIFO";
    if (S_ISCHR(mode)) return "character device";
    if (S_ISBLK(mode)) return "block device";
    if (S_ISSOCK(mode)) return "socket";
    return "special file";
}

// The directory part of path ("." without a slash) and the name after the last slash, both common_calloc'd.
static void split_path(const char *path, char **dir, char **base) {
    size_t n = strlen(path);
    const char *slash = strrchr(path, '/');
    *dir = common_calloc(n + 2, 1);
    if (!slash) strcpy(*dir, ".");
    else if (slash == path) strcpy(*dir, "/");
    else memcpy(*dir, path, (size_t)(slash - path));
    *base = common_calloc(n + 1, 1);
    strcpy(*base, slash ? slash + 1 : path);
}

// Whether the regular file at path starts with the checkpoint magic. Opened non-blocking and checked again
// after the open, in case something else was put there since the caller's stat.
static int starts_with_magic(const char *path) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return 0;
    struct stat st;
    char magic[8] = {0};
    int ours = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && read(fd, magic, 8) == 8 &&
               memcmp(magic, CHECKPOINT_MAGIC, 8) == 0;
    close(fd);
    return ours;
}

int checkpoint_check_target(const char *path, int replace_any, char *err) {
    struct stat st;
    if (stat(path, &st) == 0) {
        if (!S_ISREG(st.st_mode)) {
            err_set(err, "cannot save checkpoint '%s': it exists and is a %s, not a regular file; refusing to replace it",
                    path, checkpoint_file_kind(st.st_mode));
            return -1;
        }
        if (!replace_any && !starts_with_magic(path)) {
            err_set(err, "cannot save checkpoint '%s': it exists and is not a kvlab checkpoint; refusing to replace it",
                    path);
            return -2;
        }
    } else if (errno != ENOENT) {
        err_set(err, "cannot save checkpoint '%s': %s", path, strerror(errno));
        return -1;
    }
    // The directory must take a new file: create and remove the temp file a save would write.
    size_t tmp_len = strlen(path) + 32;
    char *tmp = common_calloc(tmp_len, 1);
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        err_set(err, "cannot save checkpoint '%s': cannot create '%s': %s", path, tmp, strerror(errno));
        common_free(tmp);
        return -1;
    }
    close(fd);
    unlink(tmp);
    common_free(tmp);
    return 0;
}

// The pid of a name "<base>.tmp.<digits>", or 0 when the name has another form.
static long temp_owner(const char *name, const char *base) {
    size_t n = strlen(base);
    if (strncmp(name, base, n) != 0 || strncmp(name + n, ".tmp.", 5) != 0) return 0;
    const char *digits = name + n + 5;
    if (*digits < '1' || *digits > '9') return 0;
    char *end = NULL;
    errno = 0;
    long pid = strtol(digits, &end, 10);
    if (*end != 0 || errno != 0 || pid <= 0) return 0;
    return pid;
}

int checkpoint_remove_stale_temps(const char *path) {
    char *dir = NULL;
    char *base = NULL;
    split_path(path, &dir, &base);
    int removed = 0;
    DIR *d = opendir(dir);
    if (d) {
        long self = (long)getpid();
        for (struct dirent *e; (e = readdir(d));) {
            long pid = temp_owner(e->d_name, base);
            if (pid == 0 || pid == self || pid > (long)INT32_MAX) continue;
            if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue; // alive, or not ours to judge
            if (unlinkat(dirfd(d), e->d_name, 0) == 0) removed++;
        }
        closedir(d);
    }
    common_free(dir);
    common_free(base);
    return removed;
}
