// Checkpoint writer and reader (layout in checkpoint.h). Every field goes through the little-endian encoder
// of common/le.h so the file is the same on every host and no struct padding leaks in. Both directions stream
// the payload through XXH64 in fixed chunks: no copy of the weights is held in memory besides the Model
// itself. The training section passes through as bytes; this file never looks inside it.
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "../common/le.h"

#define HEADER_HASHED_BYTES 84 // header bytes covered by the header checksum (everything before it)
#define CHUNK_FLOATS 4096      // floats converted per chunk (16 KiB on the stack)
#define CHUNK_BYTES (CHUNK_FLOATS * 4)

typedef struct {
    ModelConfig cfg;
    uint32_t version, header_bytes, flags;
    uint64_t n_params, payload_bytes, payload_hash, header_hash;
} Header;

static void header_encode(unsigned char h[CHECKPOINT_HEADER_BYTES], const Header *hd) {
    const ModelConfig *c = &hd->cfg;
    memcpy(h, CHECKPOINT_MAGIC, 8);
    le_put_u32(h + 8, hd->version);
    le_put_u32(h + 12, hd->header_bytes);
    le_put_u32(h + 16, hd->flags);
    le_put_u32(h + 20, (uint32_t)c->vocab_size);
    le_put_u32(h + 24, (uint32_t)c->n_layer);
    le_put_u32(h + 28, (uint32_t)c->n_head);
    le_put_u32(h + 32, (uint32_t)c->n_kv_head);
    le_put_u32(h + 36, (uint32_t)c->n_embd);
    le_put_u32(h + 40, (uint32_t)c->n_hidden);
    le_put_u32(h + 44, (uint32_t)c->block_size);
    le_put_f32(h + 48, c->rope_theta);
    le_put_f32(h + 52, c->norm_eps);
    le_put_f32(h + 56, c->dropout);
    le_put_u64(h + 60, hd->n_params);
    le_put_u64(h + 68, hd->payload_bytes);
    le_put_u64(h + 76, hd->payload_hash);
    le_put_u64(h + 84, XXH64(h, HEADER_HASHED_BYTES, 0));
}

static void header_decode(Header *hd, const unsigned char h[CHECKPOINT_HEADER_BYTES]) {
    ModelConfig *c = &hd->cfg;
    hd->version = le_get_u32(h + 8);
    hd->header_bytes = le_get_u32(h + 12);
    hd->flags = le_get_u32(h + 16);
    c->vocab_size = (int32_t)le_get_u32(h + 20);
    c->n_layer = (int32_t)le_get_u32(h + 24);
    c->n_head = (int32_t)le_get_u32(h + 28);
    c->n_kv_head = (int32_t)le_get_u32(h + 32);
    c->n_embd = (int32_t)le_get_u32(h + 36);
    c->n_hidden = (int32_t)le_get_u32(h + 40);
    c->block_size = (int32_t)le_get_u32(h + 44);
    c->rope_theta = le_get_f32(h + 48);
    c->norm_eps = le_get_f32(h + 52);
    c->dropout = le_get_f32(h + 56);
    hd->n_params = le_get_u64(h + 60);
    hd->payload_bytes = le_get_u64(h + 68);
    hd->payload_hash = le_get_u64(h + 76);
    hd->header_hash = le_get_u64(h + 84);
}

// Payload bytes of the tokenizer and weights (the training section comes after them); -1 if it would not fit
// in 64 bits.
static int model_payload_size(uint64_t vocab, uint64_t n_params, uint64_t *out) {
    if (vocab > 256 || n_params > (UINT64_MAX / 16)) return -1;
    *out = 4 + vocab + 4 * n_params;
    return 0;
}

// ---- writer: payload bytes go to the file and the running hash; the first error sticks ----

typedef struct {
    FILE *f;
    XXH64_state_t *hash;
    uint64_t bytes;
    int err_no; // 0 while every write succeeded
} Writer;

static void writer_put(Writer *w, const void *p, size_t n) {
    if (w->err_no) return;
    errno = 0;
    if (fwrite(p, 1, n, w->f) != n) {
        w->err_no = errno ? errno : EIO;
        return;
    }
    XXH64_update(w->hash, p, n);
    w->bytes += n;
}
static void writer_u32(Writer *w, uint32_t v) {
    unsigned char b[4];
    le_put_u32(b, v);
    writer_put(w, b, 4);
}
static void writer_f32s(Writer *w, const float *x, size_t n) {
    unsigned char buf[CHUNK_BYTES];
    for (size_t i = 0; i < n; i += CHUNK_FLOATS) {
        size_t k = n - i < CHUNK_FLOATS ? n - i : CHUNK_FLOATS;
        for (size_t j = 0; j < k; j++) le_put_f32(buf + 4 * j, x[i + j]);
        writer_put(w, buf, 4 * k);
    }
}

// fsyncs the directory holding path so the rename itself is durable.
static int sync_parent_dir(const char *path) {
    size_t n = strlen(path);
    char *dir = common_calloc(n + 2, 1);
    const char *slash = strrchr(path, '/');
    if (!slash) strcpy(dir, ".");
    else if (slash == path) strcpy(dir, "/");
    else memcpy(dir, path, (size_t)(slash - path));
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    common_free(dir);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    if (rc != 0 && errno == EINVAL) rc = 0; // the filesystem cannot sync directories; nothing more to do
    int saved = errno;
    close(fd);
    errno = saved;
    return rc;
}

// Writes header and payload to f, flushes and fsyncs it. Returns 0, or -1 with errno set and *step naming
// the call that failed.
static int write_stream(FILE *f, Header *hd, const float *weights, const Tokenizer *tok,
                        const unsigned char *train_bytes, size_t train_size, const char **step) {
    unsigned char h[CHECKPOINT_HEADER_BYTES];
    header_encode(h, hd); // placeholder checksum; rewritten below once the payload hash is known
    *step = "write";
    errno = 0;
    if (fwrite(h, 1, sizeof h, f) != sizeof h) {
        if (!errno) errno = EIO;
        return -1;
    }
    XXH64_state_t *hash = XXH64_createState();
    CHECK(hash);
    XXH64_reset(hash, 0);
    Writer w = {.f = f, .hash = hash};
    writer_u32(&w, (uint32_t)tok->vocab_size);
    writer_put(&w, tok->id_to_byte, (size_t)tok->vocab_size);
    writer_f32s(&w, weights, (size_t)hd->n_params);
    if (train_bytes) writer_put(&w, train_bytes, train_size);
    hd->payload_hash = XXH64_digest(hash);
    XXH64_freeState(hash);
    if (w.err_no) {
        errno = w.err_no;
        return -1;
    }
    CHECK(w.bytes == hd->payload_bytes);

    header_encode(h, hd);
    errno = 0;
    if (fseek(f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof h, f) != sizeof h) {
        if (!errno) errno = EIO;
        return -1;
    }
    *step = "flush";
    if (fflush(f) != 0) return -1;
    *step = "fsync";
    if (fsync(fileno(f)) != 0) return -1;
    return 0;
}

int checkpoint_save(const char *path, const Model *m, const Tokenizer *tok, const unsigned char *train_bytes,
                    size_t train_size, char *err) {
    CHECK(path && m && tok && m->params_memory);
    CHECK(m->n_params == model_param_count(&m->cfg));
    if (tok->vocab_size != m->cfg.vocab_size) {
        err_set(err,
                "cannot save checkpoint '%s': the tokenizer has %d symbols but the model's vocab_size is %d",
                path, tok->vocab_size, m->cfg.vocab_size);
        return -1;
    }
    if (train_bytes) CHECK(train_size > 0);
    Header hd = {.cfg = m->cfg, .version = CHECKPOINT_VERSION, .header_bytes = CHECKPOINT_HEADER_BYTES,
                 .flags = train_bytes ? CHECKPOINT_FLAG_TRAIN_STATE : 0, .n_params = m->n_params};
    CHECK(model_payload_size((uint64_t)tok->vocab_size, hd.n_params, &hd.payload_bytes) == 0);
    if (train_bytes) {
        CHECK(train_size <= UINT64_MAX - hd.payload_bytes);
        hd.payload_bytes += train_size;
    }

    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode)) {
        err_set(err, "cannot save checkpoint '%s': it is a %s, not a regular file; refusing to replace it", path,
                checkpoint_file_kind(st.st_mode));
        return -1;
    }
    // weights that live on a device are checked and written from a host copy
    float *host = NULL;
    if (m->ops->on_device) {
        host = common_calloc(m->n_params, sizeof(float));
        model_params_download(m, host);
    }
    const float *weights = host ? host : m->params_memory;
    char what[128];
    if (model_params_describe_nonfinite(&m->cfg, weights, what, sizeof what)) {
        err_set(err, "cannot save checkpoint '%s': %s (non-finite weights are never saved)", path, what);
        common_free(host);
        return -1;
    }
    checkpoint_remove_stale_temps(path);
    // The temp name carries the pid so concurrent savers never share one; a stale one of ours is overwritten.
    size_t tmp_len = strlen(path) + 32;
    char *tmp = common_calloc(tmp_len, 1);
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    const char *step = "create";
    int rc = -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (fd < 0) {
        err_set(err, "cannot save checkpoint '%s': cannot create '%s': %s", path, tmp, strerror(errno));
        common_free(tmp);
        common_free(host);
        return -1;
    }
    FILE *f = fdopen(fd, "wb");
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    } else {
        rc = write_stream(f, &hd, weights, tok, train_bytes, train_size, &step);
        int e = errno;
        if (fclose(f) != 0 && rc == 0) {
            step = "close";
            rc = -1;
            e = errno;
        }
        errno = e;
        if (rc == 0) {
            step = "rename";
            rc = rename(tmp, path) == 0 ? 0 : -1;
        }
    }
    if (rc != 0) {
        int e = errno;
        common_free(host);
        unlink(tmp);
        err_set(err, "cannot save checkpoint '%s': %s of '%s' failed: %s", path, step, tmp, strerror(e));
        common_free(tmp);
        return -1;
    }
    common_free(host);
    common_free(tmp);
    if (sync_parent_dir(path) != 0) {
        err_set(err, "saved checkpoint '%s' but could not fsync its directory: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

// ---- reader: payload bytes come from the file into the running hash; the first error sticks ----

typedef struct {
    FILE *f;
    XXH64_state_t *hash;
    const char *path;
    char *err;
    int failed;
} Reader;

static void reader_get(Reader *r, void *p, size_t n) {
    if (r->failed) return;
    errno = 0;
    if (fread(p, 1, n, r->f) != n) {
        // sizes were checked against the file length, so this is an I/O error or a file changing under us
        err_set(r->err, "cannot read checkpoint '%s': %s", r->path,
                ferror(r->f) && errno ? strerror(errno) : "the file changed while it was being read");
        r->failed = 1;
        return;
    }
    XXH64_update(r->hash, p, n);
}
static uint32_t reader_u32(Reader *r) {
    unsigned char b[4] = {0};
    reader_get(r, b, 4);
    return le_get_u32(b);
}
// Reads n floats into x.
static void reader_f32s(Reader *r, float *x, size_t n) {
    unsigned char buf[CHUNK_BYTES];
    for (size_t i = 0; i < n && !r->failed; i += CHUNK_FLOATS) {
        size_t k = n - i < CHUNK_FLOATS ? n - i : CHUNK_FLOATS;
        reader_get(r, buf, 4 * k);
        if (!r->failed)
            for (size_t j = 0; j < k; j++) x[i + j] = le_get_f32(buf + 4 * j);
    }
}
// Reads n bytes into x, or only hashes them (in chunks) when x is NULL.
static void reader_bytes(Reader *r, unsigned char *x, uint64_t n) {
    if (x) {
        reader_get(r, x, (size_t)n);
        return;
    }
    unsigned char buf[CHUNK_BYTES];
    for (uint64_t i = 0; i < n && !r->failed; i += CHUNK_BYTES) {
        size_t k = n - i < CHUNK_BYTES ? (size_t)(n - i) : CHUNK_BYTES;
        reader_get(r, buf, k);
    }
}

// Validates the header against itself and the file length; fills hd. Nothing is allocated.
static int check_header(const char *path, FILE *f, uint64_t file_len, Header *hd, char *err) {
    unsigned char h[CHECKPOINT_HEADER_BYTES];
    size_t want = file_len < sizeof h ? (size_t)file_len : sizeof h;
    errno = 0;
    if (fread(h, 1, want, f) != want) {
        err_set(err, "cannot read checkpoint '%s': %s", path, errno ? strerror(errno) : "short read");
        return -1;
    }
    if (want >= 4 && memcmp(h, "GGUF", 4) == 0) { // the GGUF import is read-only (checkpoints/gguf.h)
        err_set(err, "'%s' is a GGUF model, not a kvlab checkpoint: build/infer and build/serve load it "
                     "(--model); build/train cannot resume or start from it", path);
        return -1;
    }
    if (memcmp(h, CHECKPOINT_MAGIC, want < 8 ? want : 8) != 0) {
        err_set(err, "'%s' is not a kvlab checkpoint (bad magic) nor a GGUF model", path);
        return -1;
    }
    if (want >= 12) {
        uint32_t version = le_get_u32(h + 8);
        if (version > CHECKPOINT_VERSION) {
            err_set(err, "'%s': checkpoint version %u is newer than this build supports (%d)", path, version,
                    CHECKPOINT_VERSION);
            return -1;
        }
        if (version == 0) {
            err_set(err, "checkpoint '%s' is corrupted: version 0 does not exist", path);
            return -1;
        }
    }
    if (want < sizeof h) {
        err_set(err, "checkpoint '%s' is truncated: %llu bytes, shorter than the %d-byte header", path,
                (unsigned long long)file_len, CHECKPOINT_HEADER_BYTES);
        return -1;
    }
    header_decode(hd, h);
    if (hd->header_bytes != CHECKPOINT_HEADER_BYTES) {
        err_set(err, "checkpoint '%s' is corrupted: header size %u, version %d uses %d", path,
                hd->header_bytes, CHECKPOINT_VERSION, CHECKPOINT_HEADER_BYTES);
        return -1;
    }
    if (XXH64(h, HEADER_HASHED_BYTES, 0) != hd->header_hash) {
        err_set(err, "checkpoint '%s' is corrupted: header checksum mismatch", path);
        return -1;
    }
    if (hd->flags & ~CHECKPOINT_FLAG_TRAIN_STATE) {
        err_set(err, "checkpoint '%s' has unknown flags 0x%x", path,
                hd->flags & ~CHECKPOINT_FLAG_TRAIN_STATE);
        return -1;
    }
    uint64_t have = file_len - CHECKPOINT_HEADER_BYTES;
    if (hd->payload_bytes != have) {
        unsigned long long expected = hd->payload_bytes > UINT64_MAX - CHECKPOINT_HEADER_BYTES
                                          ? UINT64_MAX
                                          : hd->payload_bytes + CHECKPOINT_HEADER_BYTES;
        err_set(err, "checkpoint '%s' %s: expected %llu bytes, found %llu", path,
                hd->payload_bytes > have ? "is truncated" : "has trailing bytes", expected,
                (unsigned long long)file_len);
        return -1;
    }
    char reason[ERR_LEN];
    if (model_config_validate(&hd->cfg, reason) != 0) {
        err_set(err, "checkpoint '%s' has an invalid model config: %s", path, reason);
        return -1;
    }
    if (hd->cfg.vocab_size > 256) {
        err_set(err, "checkpoint '%s' has vocab_size %d, more than the 256 symbols of a byte tokenizer", path,
                hd->cfg.vocab_size);
        return -1;
    }
    size_t need = model_param_count(&hd->cfg);
    if (hd->n_params != (uint64_t)need) {
        err_set(err, "checkpoint '%s' is inconsistent: the header says %llu parameters, its config needs %zu",
                path, (unsigned long long)hd->n_params, need);
        return -1;
    }
    uint64_t expected = 0;
    if (model_payload_size((uint64_t)hd->cfg.vocab_size, hd->n_params, &expected) != 0) {
        err_set(err, "checkpoint '%s' is inconsistent: %llu parameters do not fit a 64-bit payload size", path,
                (unsigned long long)hd->n_params);
        return -1;
    }
    int with_train = (hd->flags & CHECKPOINT_FLAG_TRAIN_STATE) != 0;
    if (!with_train && hd->payload_bytes != expected) {
        err_set(err, "checkpoint '%s' is inconsistent: the payload is %llu bytes, its config needs %llu",
                path, (unsigned long long)hd->payload_bytes, (unsigned long long)expected);
        return -1;
    }
    if (with_train && hd->payload_bytes <= expected) {
        err_set(err,
                "checkpoint '%s' is inconsistent: the payload is %llu bytes, its config needs %llu before the "
                "training section its flags promise",
                path, (unsigned long long)hd->payload_bytes, (unsigned long long)expected);
        return -1;
    }
    if (with_train && hd->payload_bytes - expected > SIZE_MAX) {
        err_set(err, "checkpoint '%s' has a training section too large for this host", path);
        return -1;
    }
    return 0;
}

int checkpoint_load(const char *path, Model *m, const Ops *ops, Tokenizer *tok, unsigned char **train_bytes,
                    size_t *train_size, int *has_train, char *err) {
    CHECK(path && m && ops && tok);
    CHECK(!train_bytes || train_size);
    FILE *f = common_open_regular(path, "checkpoint", NULL, err); // a FIFO is refused, never waited on
    if (!f) return -1;
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        err_set(err, "cannot stat checkpoint '%s': %s", path, strerror(errno));
        fclose(f);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        err_set(err, "'%s' is not a regular file, so not a kvlab checkpoint", path);
        fclose(f);
        return -1;
    }
    Header hd;
    if (check_header(path, f, (uint64_t)st.st_size, &hd, err) != 0) {
        fclose(f);
        return -1;
    }

    // The sizes are now consistent with the file: allocate and stream the payload straight into place.
    int file_train = (hd.flags & CHECKPOINT_FLAG_TRAIN_STATE) != 0;
    uint64_t model_bytes = 0;
    CHECK(model_payload_size((uint64_t)hd.cfg.vocab_size, hd.n_params, &model_bytes) == 0);
    uint64_t section_size = file_train ? hd.payload_bytes - model_bytes : 0; // check_header: fits a size_t
    unsigned char *section = NULL;
    if (file_train && train_bytes) section = common_calloc((size_t)section_size, 1);
    model_init(m, &hd.cfg, ops);
    XXH64_state_t *hash = XXH64_createState();
    CHECK(hash);
    XXH64_reset(hash, 0);
    Reader r = {.f = f, .hash = hash, .path = path, .err = err};

    unsigned char bytes[256];
    uint32_t tok_vocab = reader_u32(&r);
    reader_get(&r, bytes, (size_t)hd.cfg.vocab_size);
    reader_f32s(&r, m->params_memory, m->n_params);
    reader_bytes(&r, section, section_size);
    uint64_t digest = XXH64_digest(hash);
    XXH64_freeState(hash);
    fclose(f);

    char reason[ERR_LEN];
    Tokenizer ltok;
    if (r.failed) goto fail;
    if (digest != hd.payload_hash) {
        err_set(err, "checkpoint '%s' is corrupted: payload checksum %016llx, the header says %016llx", path,
                (unsigned long long)digest, (unsigned long long)hd.payload_hash);
        goto fail;
    }
    if (tok_vocab != (uint32_t)hd.cfg.vocab_size) {
        err_set(err, "checkpoint '%s' is inconsistent: the tokenizer has %u symbols but vocab_size is %d",
                path, tok_vocab, hd.cfg.vocab_size);
        goto fail;
    }
    if (tokenizer_from_bytes(&ltok, bytes, hd.cfg.vocab_size, reason) != 0) {
        err_set(err, "checkpoint '%s' has a bad tokenizer: %s", path, reason);
        goto fail;
    }
    if (model_params_describe_nonfinite(&hd.cfg, m->params_memory, reason, sizeof reason)) {
        err_set(err, "checkpoint '%s' has non-finite weights: %s", path, reason);
        goto fail;
    }
    *tok = ltok;
    if (train_bytes) {
        *train_bytes = section;
        *train_size = (size_t)section_size;
    }
    if (has_train) *has_train = file_train;
    return 0;

fail:
    common_free(section);
    model_free(m);
    return -1;
}
