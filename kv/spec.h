// The --kv=SPEC grammar: one selection policy (which tokens stay) and optional storage terms (how they are
// held), joined by '+':
//
//   SPEC    := SELECT ('+' TERM)* | TERM ('+' TERM)*      (a bare first term means full selection with it)
//   SELECT  := a policy of kv/registry.c: full | window:W | sink:S,window:W | h2o:H,R | tova:B
//              | snapkv:B[,W[,K]] | knorm:B[,L] | random:B[,R[,SEED]]
//   TERM    := a codec of kv/registry.c: fp32 | fp16 | fp8[:G] | int8[:G] | int4[:G] | int2[:G] | kivi2[:G[,R]]
//              | kivi4[:G[,R]]; or a modifier: lowrank:R | hadamard | fpkeep:S,R | minicache:L[,A] | pyramid
//              | paged:BLOCK | tier:N
//
// So `int4` = `full+int4` and `paged:16` = `full+paged:16`. Each policy and codec documents its own terms in
// its file (kv/window.c, kv/int.c, ...); docs/kv.md has the whole grammar with the papers.
//
// Numbers are token counts per layer and key/value head. The modifiers: lowrank:R holds keys and values as R
// coefficients on a calibrated basis; hadamard rotates keys before a quantized format; fpkeep:S,R keeps the
// first S and newest R tokens in fp32 under a quantized format; minicache:L[,A] merges layer pairs from L
// (full selection, fp32/fp16 rows); pyramid spreads the budget over layers (PyramidKV); paged:BLOCK holds the
// cache in a pool of BLOCK-token blocks (kv/paged.h: policies with a block victim, per-row codecs, nothing
// else); tier:N (with paged:BLOCK alone) keeps N blocks in the fast tier.
#ifndef KVLAB_KV_SPEC_H
#define KVLAB_KV_SPEC_H

#include <stdint.h>

typedef struct KVPolicy KVPolicy; // kv/policy.h
typedef struct KVCodec KVCodec;   // kv/codec.h

typedef struct {
    const KVPolicy *policy; // which tokens stay (after a parse never NULL: full selection is a policy)
    int sink;        // sink: S first tokens
    int window;      // window / sink: W newest tokens; snapkv: observation window
    int heavy;       // h2o: H heavy hitters
    int recent;      // h2o, random: R most recent tokens protected
    int keep;        // tova / snapkv / knorm / random: B tokens
    int kernel;      // snapkv pooling kernel
    int skip_layers; // knorm: first layers left whole
    uint64_t seed;   // random: the victims' RNG seed
    const KVCodec *codec; // how rows are stored (after a parse never NULL: fp32 is a codec)
    int codec_named;      // 1 when the spec names its storage term (fp32 included), 0 for the default
    int group;       // int, fp8: channels per group (0 = default); kivi: tokens per key group (32)
    int residual;    // kivi: newest tokens kept in fp32 before their group is quantized (128)
    int rank;        // lowrank: keys and values held as R coefficients on a calibrated basis (0 = off)
    int fp_sink;     // fpkeep: the first S tokens stay fp32 under a quantized format
    int fp_recent;   // fpkeep: the newest R tokens stay fp32 until they age out
    int merge_from;  // minicache: first merged layer + 1 (0 = off)
    int merge_angle; // minicache: tokens whose two layers' directions differ by more (degrees) stay unmerged
    int hadamard;
    int pyramid;
    int paged_block; // paged: tokens per block (0 = not paged)
    int tier_fast;   // tier:N: the fast tier holds N blocks (--eval tier; 0 = not given)
    char text[128];  // the spec as given
} KVSpec;

// Every form the grammar accepts, built from the registries (one line, for errors and --help).
const char *kv_spec_forms(void);

// Strict parse; on error one line in err that names the bad term and lists the valid forms.
int kv_spec_parse(KVSpec *spec, const char *text, char *err);
// Tokens held per layer and head before pyramid weighting (0 = unbounded).
int kv_spec_budget(const KVSpec *spec);
// Parses "a,b,c" non-negative integers (at most max) for the policy and codec files; returns how many were
// read (0 for NULL), -1 when malformed.
int kv_parse_ints(const char *s, int *out, int max);
// Whether the spec keeps every token (full selection).
int kv_spec_is_full(const KVSpec *spec);
// The policy's and codec's names, e.g. for JSON ("window", "int4").
const char *kv_spec_policy_name(const KVSpec *spec);
const char *kv_spec_codec_name(const KVSpec *spec);

#endif
