// The mode flag tables' parser and help, and loading the checkpoint (see mode.h).
#include "mode.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoints/gguf.h"
#include "../common/args.h"
#include "../decode/device_store.h"

const Mode *mode_find(const char *name) {
    for (int i = 0; i < mode_count; i++)
        if (strcmp(mode_table[i]->name, name) == 0) return mode_table[i];
    return NULL;
}

static const ModeFlag *mode_find_flag(const Mode *mode, const char *name) {
    for (const ModeFlag *f = mode->flags; f->name; f++)
        if (strcmp(f->name, name) == 0 || (f->alias && strcmp(f->alias, name) == 0)) return f;
    return NULL;
}

int mode_flag_takes_value(const char *name) {
    for (int i = 0; i < mode_count; i++) {
        const ModeFlag *f = mode_find_flag(mode_table[i], name);
        if (f) return f->kind != MODE_FLAG_SWITCH;
    }
    return 0;
}

// "kv, recall, prefix": the modes that take a flag, into out.
static int mode_list_owners(const char *name, char *out, size_t len) {
    size_t used = 0;
    int n = 0;
    out[0] = 0;
    for (int i = 0; i < mode_count; i++) {
        if (!mode_find_flag(mode_table[i], name)) continue;
        int w = snprintf(out + used, len - used, "%s%s", n ? ", " : "", mode_table[i]->name);
        if (w < 0 || (size_t)w >= len - used) break;
        used += (size_t)w;
        n++;
    }
    return n;
}

static int mode_store_value(const ModeFlag *f, Args *a, void *opts) {
    char *dst = (char *)opts + f->offset;
    switch (f->kind) {
    case MODE_FLAG_STRING: return args_string(a, (const char **)(void *)dst);
    case MODE_FLAG_INT: return args_int(a, (int)f->lo, (int)f->hi, (int *)(void *)dst);
    case MODE_FLAG_U64: return args_u64(a, (uint64_t *)(void *)dst);
    case MODE_FLAG_FLOAT: return args_float(a, (float)f->lo, (float)f->hi, (float *)(void *)dst);
    case MODE_FLAG_SWITCH:
        if (a->value) {
            snprintf(a->err, sizeof(a->err), "%s takes no value", a->flag);
            return -1;
        }
        *(int *)(void *)dst = 1;
        return 0;
    }
    return -1;
}

int mode_parse_flags(const Mode *mode, int argc, char **argv, int first, void *opts, const char *skip, int legacy,
                     char *err) {
    memset(opts, 0, mode->opts_size);
    ((ModeCommon *)opts)->device = "cpu";
    if (mode->defaults) mode->defaults(opts);
    Args a;
    args_init(&a, argc, argv);
    a.i = first - 1;
    int r;
    while ((r = args_next(&a)) > 0) {
        if (args_is(&a, "--help") || args_is(&a, "-h")) {
            mode_print_help(mode);
            exit(0);
        }
        if (skip && args_is(&a, skip)) {
            if (!args_value(&a)) break;
            continue;
        }
        const ModeFlag *f = mode_find_flag(mode, a.flag);
        if (f) {
            if (mode_store_value(f, &a, opts) != 0) break;
            continue;
        }
        char owners[256];
        if (!mode_list_owners(a.flag, owners, sizeof(owners))) {
            if (legacy) err_set(err, "unknown flag '%s' (see --help)", a.flag);
            else err_set(err, "unknown flag '%s' (see build/infer %s --help)", a.flag, mode->name);
            return -1;
        }
        // the old `--eval FILE` scores without --kv: say that the streaming eval's flags come with it
        const char *hint = legacy && strcmp(mode->name, "score") == 0 && strstr(owners, "kv")
                               ? "; the streaming eval's flags need --kv SPEC"
                               : "";
        if (legacy)
            err_set(err, "%s does not apply to %s (it is a flag of %s)%s", a.flag, mode->name, owners, hint);
        else
            err_set(err, "%s does not apply (it is a flag of %s)", a.flag, owners);
        return -1;
    }
    if (r != 0 || a.err[0]) {
        err_set(err, "%s", a.err);
        return -1;
    }
    if (!((ModeCommon *)opts)->ckpt) {
        err_set(err, "--ckpt FILE is required (a checkpoint, or a GGUF model; --model is the same flag; see --help)");
        return -1;
    }
    return 0;
}

void mode_print_help(const Mode *mode) {
    printf("usage: %s\n\n", mode->usage);
    if (mode->about) printf("%s\n", mode->about);
    for (const ModeFlag *f = mode->flags; f->name; f++) {
        char left[64];
        snprintf(left, sizeof(left), "%s%s%s%s%s", f->alias ? f->alias : "", f->alias ? ", " : "", f->name,
                 f->arg ? " " : "", f->arg ? f->arg : "");
        printf("  %-22s %s\n", left, f->help);
    }
}

int mode_load_model(const ModeCommon *c, int allow_cuda, Model *m, Tokenizer *tok, char *err) {
    if (strcmp(c->device, "cpu") != 0 && strcmp(c->device, "cuda") != 0) {
        err_set(err, "bad --device '%s': valid values are cpu, cuda", c->device);
        return -1;
    }
    if (strcmp(c->device, "cuda") == 0 && !allow_cuda) {
        err_set(err, "--device cuda runs `build/infer score`, `generate` and `kv` in this release; the other modes "
                     "run on the CPU");
        return -1;
    }
    const Ops *backend = ops_for_device(c->device, err);
    if (!backend) return -1;
    if (gguf_or_checkpoint_load(c->ckpt, m, &ops_cpu, tok, err) != 0) return -1;
    if (c->kv_heads && c->kv_heads != m->cfg.n_kv_head) {
        Model pooled;
        int rc = model_convert_kv_heads(&pooled, m, c->kv_heads, KV_INIT_MEAN, err);
        model_free(m);
        if (rc != 0) {
            tokenizer_free(tok);
            return -1;
        }
        *m = pooled;
    }
    model_to_backend(m, backend);
    return 0;
}

int mode_check_device_spec(const ModeCommon *c, const KVSpec *spec, char *err) {
    if (strcmp(c->device, "cuda") != 0) return 0;
    return decode_device_check(spec, err);
}

int mode_load_calibration(const KVSpec *spec, Tokenizer *tok, const char *data, Corpus *calib, char *err) {
    *calib = (Corpus){0};
    if (!spec->rank) return 0;
    return corpus_load(calib, tok, data, 0, NULL, err);
}
