// build/infer: a dispatcher over its modes (mode.h; one file each). The first argument may name the mode
// (`build/infer generate --ckpt C --prompt P`); otherwise the old spellings pick it: --prompt => generate,
// --eval FILE => score (kv with --kv), --eval recall|prefix|tier|reuse|attention => that mode.
#include <stdio.h>
#include <string.h>

#include "../common/common.h"
#include "../common/runtime.h"
#include "../kv/codec.h"
#include "../kv/policy.h"

#include "mode.h"

static void main_print_help(void) {
    printf("usage: build/infer MODE --ckpt FILE [flags]     (build/infer MODE --help: the mode's flags)\n"
           "       build/infer --ckpt FILE --prompt TEXT ...  (= generate)\n"
           "       build/infer --ckpt FILE --eval FILE|recall|prefix|tier|reuse|attention ...  (= that mode)\n"
           "\n"
           "Generates text from a trained checkpoint or a GGUF model (--model) through any KV cache, and measures\n"
           "what a KV cache costs "
           "and saves. Modes:\n\n");
    for (int i = 0; i < mode_count; i++) printf("  %-12s %s\n", mode_table[i]->name, mode_table[i]->summary);
    printf("\nKV specs (--kv): SELECT[+TERM...], or TERM[+TERM...] with full selection (int4 = full+int4)\n"
           "  selection policies (kv/registry.c):\n");
    for (int i = 0; i < kv_policy_count; i++)
        printf("    %-22s %s\n", kv_policies[i]->form, kv_policies[i]->help);
    printf("  storage formats:\n");
    for (int i = 0; i < kv_codec_count; i++) printf("    %-22s %s\n", kv_codecs[i]->form, kv_codecs[i]->help);
    printf("  modifiers: lowrank:R | fpkeep:S,R | minicache:L[,A] | hadamard | pyramid | paged:BLOCK | tier:N\n"
           "  e.g. --kv int4, --kv=sink:4,window:60+int4, --kv=h2o:16,16+pyramid, --kv=window:64+paged:16+fp8\n"
           "  (docs/kv.md explains each technique and what composes.)\n");
    printf("\nBLAS: %s\n", common_blas_kernels());
}

// The old spellings: which mode --prompt / --eval select. *skip is set to "--eval" when the flag only named
// the mode. NULL with a message when neither or both are given.
static const Mode *main_find_legacy_mode(int argc, char **argv, const char **skip, char *err) {
    const char *prompt = NULL;
    const char *eval = NULL;
    int kv = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *eq = strchr(a, '=');
        size_t len = eq ? (size_t)(eq - a) : strlen(a);
        const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[i + 1] : NULL);
        if (len == 8 && strncmp(a, "--prompt", len) == 0) prompt = value ? value : "";
        else if (len == 6 && strncmp(a, "--eval", len) == 0) eval = value ? value : "";
        else if (len == 4 && strncmp(a, "--kv", len) == 0) kv = 1;
        char name[64];
        snprintf(name, sizeof(name), "%.*s", (int)len, a);
        if (!eq && strncmp(a, "-", 1) == 0 && mode_flag_takes_value(name)) i++; // skip the value
    }
    *skip = NULL;
    if (prompt && eval) {
        err_set(err, "--prompt and --eval are separate modes; give one");
        return NULL;
    }
    if (prompt) return mode_find("generate");
    if (!eval) {
        err_set(err, "give --prompt TEXT to generate or --eval FILE to score, or name a mode (see --help)");
        return NULL;
    }
    const char *named[] = {"recall", "prefix", "tier", "reuse", "attention"};
    for (size_t i = 0; i < sizeof(named) / sizeof(named[0]); i++)
        if (strcmp(eval, named[i]) == 0) {
            *skip = "--eval";
            return mode_find(named[i]);
        }
    return mode_find(kv ? "kv" : "score");
}

int main(int argc, char **argv) {
    common_runtime_init(argc, argv);
    char err[ERR_LEN];
    if (argc < 2) {
        fprintf(stderr, "infer: name a mode and give --ckpt FILE (see build/infer --help)\n");
        return 1;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        main_print_help();
        return 0;
    }
    const Mode *mode = NULL;
    const char *skip = NULL;
    int legacy = argv[1][0] == '-';
    if (!legacy) {
        mode = mode_find(argv[1]);
        if (!mode) {
            fprintf(stderr, "infer: unknown mode '%s' (modes: generate, score, kv, recall, prefix, tier, reuse, "
                            "attention, compare-gen; see --help)\n", argv[1]);
            return 1;
        }
    } else {
        mode = main_find_legacy_mode(argc, argv, &skip, err);
    }
    if (!mode) { // an old spelling that names no mode: --help gives the overview, anything else an error
        for (int i = 1; i < argc; i++)
            if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
                main_print_help();
                return 0;
            }
        fprintf(stderr, "infer: %s\n", err);
        return 1;
    }
    void *opts = common_calloc(1, mode->opts_size);
    int rc = mode_parse_flags(mode, argc, argv, legacy ? 1 : 2, opts, skip, legacy, err);
    if (rc == 0) rc = mode->run(opts, err);
    common_free(opts);
    if (rc == 0) return 0;
    if (legacy) fprintf(stderr, "infer: %s\n", err);
    else fprintf(stderr, "infer %s: %s\n", mode->name, err);
    return 1;
}
