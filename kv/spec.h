// The --kv=SPEC grammar: one selection policy (which tokens stay) and optional storage terms (how they are
// held), joined by '+':
//
//   SPEC    := SELECT ('+' TERM)*
//   SELECT  := full | window:W | sink:S,window:W | h2o:H,R | tova:B | snapkv:B[,W[,K]] | knorm:B[,L]
//              | paged:BLOCK  (= full+paged:BLOCK)
//   TERM    := fp16 | int8[:G] | int4[:G] | int2[:G] | kivi2[:G[,R]] | kivi4[:G[,R]] | lowrank:R | hadamard
//              | fpkeep:S,R | minicache:L[,A] | pyramid | paged:BLOCK | tier:N
//
// Numbers are token counts per layer and key/value head: W newest tokens; S first tokens (attention sinks,
// positions then assigned within the cache); H heavy hitters by accumulated attention + R most recent; B
// tokens kept; SnapKV's observation window W (32) and pooling kernel K (5); knorm leaves its first L layers
// whole (2). int8/int4/int2 hold keys and values per token in groups of G channels of a head (G = 32, or the
// head dimension if smaller) with an fp16 scale and minimum per group; fp16 halves fp32. kivi2/kivi4 is
// KIVI's layout (with full selection only): keys quantized per channel over groups of G tokens, values per
// token, the newest tokens in fp32 until R of them are waiting, then the oldest G are quantized (G 32,
// R 128; R a multiple of G). lowrank:R holds each key and value head as R coefficients on a basis fitted
// to calibration activations (the top-R principal directions, uncentred: the SVD's right singular vectors)
// and rebuilds it for attention; the coefficients are stored in the chosen format. fpkeep:S,R keeps the first
// S and the newest R tokens in fp32 under an int format (KVQuant's lesson: sinks and outliers hurt most when
// quantized; 0 is allowed for either). minicache:L[,A] (MiniCache, with full selection and fp32/fp16 rows)
// merges the caches of layer pairs (L, L+1), (L+2, L+3), ...: a token's key (and value) directions in the
// two layers are interpolated by SLERP at t = 0.5 and stored once with each layer's norm, unless they differ
// by more than A degrees (default 45), in which case both are kept. hadamard rotates
// each key head by an orthonormal Walsh-Hadamard transform before quantizing. pyramid spreads the same total
// budget over layers linearly, more in lower layers (PyramidKV), instead of uniformly. paged:BLOCK holds the
// cache in a pool of BLOCK-token blocks with prefix sharing across requests (kv/paged.h); it composes with
// full, window, sink and h2o selection (whole blocks dropped) and fp16 or int rows, nothing else. tier:N
// (with paged:BLOCK alone, for `--eval tier`) keeps N blocks in the fast tier, as --fast N does.
#ifndef KVLAB_KV_SPEC_H
#define KVLAB_KV_SPEC_H

typedef enum { KV_SEL_FULL, KV_SEL_WINDOW, KV_SEL_SINK, KV_SEL_H2O, KV_SEL_TOVA, KV_SEL_SNAPKV, KV_SEL_KNORM } KVSelect;
typedef enum { KV_FMT_F32, KV_FMT_F16, KV_FMT_INT, KV_FMT_KIVI } KVFormat;

typedef struct {
    KVSelect select;
    int sink;        // sink: S first tokens
    int window;      // window / sink: W newest tokens; snapkv: observation window
    int heavy;       // h2o: H heavy hitters
    int recent;      // h2o: R most recent
    int keep;        // tova / snapkv / knorm: B tokens
    int kernel;      // snapkv pooling kernel
    int skip_layers; // knorm: first layers left whole
    KVFormat format;
    int bits;        // int formats: 8, 4, 2
    int group;       // int: channels per group (0 = default); kivi: tokens per key group (32)
    int residual;    // kivi: newest tokens kept in fp32 before their group is quantized (128)
    int rank;        // lowrank: keys and values held as R coefficients on a calibrated basis (0 = off)
    int fp_sink;     // fpkeep: the first S tokens stay fp32 under an int format
    int fp_recent;   // fpkeep: the newest R tokens stay fp32 until they age out
    int merge_from;  // minicache: first merged layer + 1 (0 = off)
    int merge_angle; // minicache: tokens whose two layers' directions differ by more (degrees) stay unmerged
    int hadamard;
    int pyramid;
    int paged_block; // paged: tokens per block (0 = not paged)
    int tier_fast;   // tier:N: the fast tier holds N blocks (--eval tier; 0 = not given)
    char text[128];  // the spec as given
} KVSpec;

extern const char *const kv_spec_forms;

// Strict parse; on error one line in err that lists the valid forms.
int kv_spec_parse(KVSpec *spec, const char *text, char *err);
// Tokens held per layer and head before pyramid weighting (0 = unbounded).
int kv_spec_budget(const KVSpec *spec);

#endif
