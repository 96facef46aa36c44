// build/infer's modes: each mode (generate, score, kv, recall, ...) is a table of its own flags, an options
// struct they fill, a help text and a run function, so no flag struct or rule is shared by modes that do
// not use it. This file holds the table types, the one parser (a flag of another mode is an error naming
// the modes it belongs to), the help printer, and what every mode starts with: the checkpoint.
#ifndef KVLAB_INFER_MODE_H
#define KVLAB_INFER_MODE_H

#include <stddef.h>

#include "../data/loader.h"
#include "../data/tokenizer.h"
#include "../kv/spec.h"
#include "../layers/model.h"

typedef enum { MODE_FLAG_STRING, MODE_FLAG_INT, MODE_FLAG_U64, MODE_FLAG_FLOAT, MODE_FLAG_SWITCH } ModeFlagKind;

typedef struct {
    const char *name;  // "--streams"
    const char *alias; // "-n", or NULL
    ModeFlagKind kind;
    size_t offset;     // where the value goes in the mode's options struct
    double lo, hi;     // MODE_FLAG_INT / MODE_FLAG_FLOAT bounds, inclusive
    const char *arg;   // the value's name in the help ("N", "FILE"); NULL for a switch
    const char *help;  // one line, with the default in [brackets]
} ModeFlag;

// The flags every mode takes; every options struct starts with this (at offset 0).
typedef struct {
    const char *ckpt;   // --ckpt FILE or --model FILE (required): a kvlab checkpoint or a GGUF model
    const char *device; // --device cpu|cuda
    int kv_heads;       // --kv-heads G (0 = as trained)
} ModeCommon;

typedef struct {
    const char *name;    // "generate"
    const char *summary; // one line for build/infer --help
    const char *usage;   // "build/infer generate --ckpt FILE --prompt TEXT [flags]"
    const char *about;   // paragraphs after the usage line (may be NULL)
    const ModeFlag *flags; // ends with {0}
    size_t opts_size;
    void (*defaults)(void *opts);
    // Checks the flags together, loads the checkpoint and runs; -1 with one line in err.
    int (*run)(void *opts, char *err);
} Mode;

// The modes in --help order (modes.c).
extern const Mode *const mode_table[];
extern const int mode_count;

const Mode *mode_find(const char *name);
// Fills opts (opts_size bytes, defaults applied first) from argv[first..argc). `skip` names a flag the
// dispatcher already consumed (the legacy `--eval recall`; NULL for none), taken and ignored with its value.
// legacy: the mode was implied by the old spellings, so errors name the mode in the message.
// --help prints the mode's help and exits 0. -1 with one line in err.
int mode_parse_flags(const Mode *mode, int argc, char **argv, int first, void *opts, const char *skip, int legacy,
                     char *err);
void mode_print_help(const Mode *mode);
// Whether a flag (name or alias) takes a value in some mode: the dispatcher's pre-scan skips values so.
int mode_flag_takes_value(const char *name);

// Loads --ckpt (a kvlab checkpoint, or a GGUF file recognised by its magic; with --kv-heads pooling) onto
// --device; allow_cuda: the mode runs on CUDA too. -1 with a message (bad device, missing or bad checkpoint,
// bad pooling). The tokenizer may hold a BPE: release it with tokenizer_free.
int mode_load_model(const ModeCommon *c, int allow_cuda, Model *m, Tokenizer *tok, char *err);

// With --device cuda, whether the device KV cache runs spec (decode/device_store.h); -1 with one line naming
// what it takes. Asked before the checkpoint loads, so the answer needs no GPU.
int mode_check_device_spec(const ModeCommon *c, const KVSpec *spec, char *err);

// Low-rank specs fit their bases on the training split of --data: loads it into calib when spec needs it
// (else leaves calib empty). -1 with a message naming the file.
int mode_load_calibration(const KVSpec *spec, Tokenizer *tok, const char *data, Corpus *calib, char *err);

// The longest --context (and --prefill) an evaluation mode takes: the longest context a checkpoint can have
// (model_config_validate). Run time grows with the square of it, so a larger value only meant a run that never
// ends; --help says "at most 65536".
#define MODE_MAX_CONTEXT 65536

// The flag-table entries of ModeCommon, for the modes' tables (offsets are ModeCommon's, at offset 0).
#define MODE_COMMON_FLAGS                                                                                      \
    {"--ckpt", "--model", MODE_FLAG_STRING, offsetof(ModeCommon, ckpt), 0, 0, "FILE",                          \
     "checkpoint written by build/train, or a GGUF llama model (required)"},                                   \
    {"--kv-heads", NULL, MODE_FLAG_INT, offsetof(ModeCommon, kv_heads), 1, 1024, "G",                          \
     "GQA conversion at load: mean-pool the key/value heads into G groups (no retraining)"},                   \
    {"--device", NULL, MODE_FLAG_STRING, offsetof(ModeCommon, device), 0, 0, "cpu|cuda",                       \
     "cuda runs score, generate and kv (--kv full, window:W, sink:S,window:W; fp32/int8/int4/int2)   [cpu]"}

#endif
