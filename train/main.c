// build/train: trains an MHA, GQA or MQA decoder on a text corpus, from scratch, from a checkpoint's
// weights (--init-from, optionally converting to fewer key/value heads), or continuing exactly (--resume).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../checkpoints/checkpoint.h"
#include "../common/args.h"
#include "../common/runtime.h"
#include "../data/recall.h"
#include "budget.h"
#include "gradcheck.h"
#include "dist.h"
#include "presets.h"
#include "ranks.h"
#include "run.h"
#include "state_io.h"
#include "../common/progress.h"

static const char *usage =
    "usage: build/train [flags]\n"
    "\n"
    "Trains a Llama-style decoder (RMSNorm, RoPE, SwiGLU, tied embeddings) on a text corpus.\n"
    "\n"
    "model and run:\n"
    "  --preset NAME        small (default), baby, shakespeare, tiny\n"
    "  --attn SPEC          mha | gqa:G (G key/value heads; G divides n_head) | mqa   [mha]\n"
    "  --layers N --width C --heads H --hidden N --context T --dropout P\n"
    "  --batch B --steps N --lr X --min-lr X --warmup N --weight-decay X --beta2 X\n"
    "  --grad-clip X (0 = off) --grad-accum N --eval-interval N (0 = end only) --eval-windows N\n"
    "                       bounds, far past any real run: --batch 1..65536, --grad-accum 1..1024,\n"
    "                       --eval-windows 1..16384, batch x context <= 2^30 tokens, --lr and --min-lr in\n"
    "                       [1e-9, 10]; a run that needs more memory than the machine has is refused\n"
    "  --seed S             data order, initialisation and dropout   [1337]\n"
    "  --mix recall:F       replace a fraction F of training windows by long-range recall sequences\n"
    "                       (a \"$kk:vvvv;\" definition repeated later; see data/recall.h)   [0]\n"
    "  --bos                a start symbol at position 0 of every window: byte STX (0x02) joins the\n"
    "                       vocabulary, inputs are [STX, t0 .. t_{T-2}] and targets [t0 .. t_{T-1}] (text,\n"
    "                       recall and validation windows alike), so the model can grow an attention sink\n"
    "                       there; a corpus that holds byte 0x02 is refused. A checkpoint whose vocabulary\n"
    "                       holds STX keeps its start symbol (--resume, --init-from, build/infer) without\n"
    "                       the flag; --bos with one that lacks it is an error (the vocabulary is fixed)\n"
    "  --device cpu|cuda    where to train; checkpoints load and save on the host either way   [cpu]\n"
    "  --attention naive|flash  how attention trains: naive keeps the (T, T) probabilities for backward (the\n"
    "                       reference), flash keeps one log-sum-exp per row and recomputes them tile by tile\n"
    "                       (memory linear in T; the same function within float rounding)\n"
    "                       [naive on cpu, flash on cuda]\n"
    "  --precision fp32|tf32|bf16  the matrix products: fp32 (the CPU's parity), tf32 (tensor cores, 10-bit\n"
    "                       inputs) or bf16 (bf16 inputs, fp32 accumulation; the master weights, gradients,\n"
    "                       optimizer state and every other op stay fp32); tf32 and bf16 need --device cuda.\n"
    "                       A run setting: checkpoints do not record it (give it again with --resume)   [fp32]\n"
    "files:\n"
    "  --data FILE          text corpus (first 90% trains, last 10% validates)  [data/tinyshakespeare.txt]\n"
    "  --out CKPT           checkpoint written at each evaluation and at the end; checked before training:\n"
    "                       it must be absent, a kvlab checkpoint, or (with --force) a regular file, and\n"
    "                       its directory must take new files   [checkpoints/<preset>-<attn>.ckpt]\n"
    "  --force              let --out replace a regular file that is not a kvlab checkpoint\n"
    "  --resume CKPT        continue a run exactly (settings come from the checkpoint; --steps may extend it)\n"
    "  --init-from CKPT     start from a checkpoint's weights with a fresh optimiser; with --attn gqa:G|mqa\n"
    "                       its key/value heads are mean-pooled into G groups first (uptraining);\n"
    "  --kv-init mean|first with --init-from and fewer key/value heads: each group's heads mean-pooled, or its\n"
    "                       first head kept (the GQA paper's ablation)   [mean]\n"
    "                       --context N may extend the checkpoint's context (RoPE: no learned positions)\n"
    "  --stop-after N       stop after optimiser step N and save (the schedule still runs to --steps)\n"
    "  --log FILE           JSON lines: step, train_loss, val_loss (when evaluated), lr, grad_norm,\n"
    "                       tokens_per_s; a number that is not finite is null; a failed write stops the run\n"
    "  --quiet              no progress lines (the banner and the summary remain)\n"
    "  --check-grads        instead of training: one batch's loss and every parameter tensor's gradient on the\n"
    "                       CPU (fp32) and on --device cuda in --precision from the same weights, printed per tensor\n"
    "                       (relative L2 error, largest difference); exit 1 when any exceeds the precision's\n"
    "                       tolerance (fp32 1e-4, tf32 1e-2, bf16 4e-2). Writes nothing\n"
    "a non-finite loss, validation loss, gradient norm or weight stops the run (exit 1) before anything is\n"
    "saved: the last good checkpoint is kept\n"
    "several processes (mpirun -np N build/train ...; every rank reads the same corpus and checkpoint):\n"
    "  each step is N ranks x --grad-accum G micro-batches x --batch B sequences (global batch N G B): rank r\n"
    "  trains micro-batches r G .. r G + G - 1 of the step, the gradients are summed across ranks, and rank 0\n"
    "  validates, logs and saves. The same training as one process with --grad-accum N G, up to the order of the\n"
    "  gradient sums. --resume takes any rank count that divides the checkpoint's micro-batches per step\n"
    "  --zero 0|1           1: ZeRO-1, each rank keeps the AdamW moments of its 1/N of the weights (the same\n"
    "                       bits as 0; checkpoints hold all of them; one process: a note, nothing changes)   [0]\n"
    "  every rank must be given the same run flags: a rank whose --zero, --steps, --stop-after, --eval-interval,\n"
    "  --device, --precision, --attention, --batch, --grad-accum or --context differ stops the job in one line\n";

typedef struct {
    const char *preset, *attn, *data, *out, *resume, *init_from, *log, *device, *kv_init, *attention, *precision;
    int precision_mode; // OPS_PRECISION_*
    int stop_after, quiet, force, bos, check_grads, zero;
    // overrides: -1 (or < 0) means "not given"
    int layers, width, heads, hidden, context, batch, steps, warmup, grad_accum, eval_interval, eval_windows;
    float dropout, lr, min_lr, weight_decay, beta2, grad_clip, mix;
    int seed_given;
    uint64_t seed;
} Flags;

// --check-grads: 0 when every tensor agrees within the tolerance, 1 when one does not, -1 with err when the check
// cannot run.
static int check_grads(const Model *m, const Ops *backend, ModelAttention attn, int precision, const TrainConfig *tc,
                       const Corpus *c, char *err) {
    if (!backend->on_device) {
        err_set(err, "--check-grads compares the CPU with a device: give --device cuda");
        return -1;
    }
    GradCheck g;
    if (train_grad_check(m, backend, attn, precision, tc, c, tc->seed, &g, err) != 0) return -1;
    double tol = train_grad_check_tolerance(precision), loss_rel = fabs((double)g.loss_dev - g.loss_cpu) / fmax(fabs(g.loss_cpu), 1e-30);
    printf("check-grads: batch %d x %d, %s attention, %s products on %s, tolerance %.1e (relative L2 per tensor, and "
           "the loss)\n", tc->batch_size, tc->seq_len, attn == MODEL_ATTENTION_FLASH ? "flash" : "naive",
           ops_precision_name(precision), backend->name, tol);
    printf("%-12s %10s %12s %12s %12s\n", "tensor", "elements", "rel_l2", "max_diff", "max_cpu");
    int bad = !(loss_rel <= tol);
    for (int i = 0; i < NUM_PARAM_TENSORS; i++) {
        const GradDiff *d = &g.t[i];
        int ok = d->rel_l2 <= tol;
        bad |= !ok;
        printf("%-12s %10zu %12.3e %12.3e %12.3e%s\n", d->name, d->n, d->rel_l2, d->max_abs_diff, d->max_abs_ref,
               ok ? "" : "  FAIL");
    }
    printf("loss cpu %.7f %s %.7f (relative %.3e)\ncheck-grads: %s (worst tensor %.3e)\n", g.loss_cpu, backend->name,
           g.loss_dev, loss_rel, bad ? "FAIL" : "pass", g.worst_rel_l2);
    return bad;
}

// 0, 1 at --help (the flags after it are not read), or -1 with one line in err.
static int parse_flags(Flags *f, int argc, char **argv, char *err) {
    memset(f, 0, sizeof(*f));
    f->preset = preset_default_name;
    f->data = "data/tinyshakespeare.txt";
    f->device = "cpu";
    f->stop_after = -1;
    int *ints[] = {&f->layers, &f->width, &f->heads, &f->hidden, &f->context, &f->batch, &f->steps, &f->warmup,
                   &f->grad_accum, &f->eval_interval, &f->eval_windows};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++) *ints[i] = -1;
    f->dropout = f->lr = f->min_lr = f->weight_decay = f->beta2 = f->grad_clip = f->mix = -1.0f;
    Args a;
    args_init(&a, argc, argv);
    int r;
    while ((r = args_next(&a)) > 0) {
        int rc = 0;
        if (args_is(&a, "--help") || args_is(&a, "-h")) return 1;
        else if (args_is(&a, "--preset")) rc = args_string(&a, &f->preset);
        else if (args_is(&a, "--attn")) rc = args_string(&a, &f->attn);
        else if (args_is(&a, "--kv-init")) rc = args_string(&a, &f->kv_init);
        else if (args_is(&a, "--data")) rc = args_string(&a, &f->data);
        else if (args_is(&a, "--out")) rc = args_string(&a, &f->out);
        else if (args_is(&a, "--resume")) rc = args_string(&a, &f->resume);
        else if (args_is(&a, "--init-from")) rc = args_string(&a, &f->init_from);
        else if (args_is(&a, "--log")) rc = args_string(&a, &f->log);
        else if (args_is(&a, "--device")) rc = args_string(&a, &f->device);
        else if (args_is(&a, "--attention")) rc = args_string(&a, &f->attention);
        else if (args_is(&a, "--precision")) rc = args_string(&a, &f->precision);
        else if (args_is(&a, "--quiet")) f->quiet = 1;
        else if (args_is(&a, "--check-grads")) f->check_grads = 1;
        else if (args_is(&a, "--force")) f->force = 1;
        else if (args_is(&a, "--bos")) f->bos = 1;
        else if (args_is(&a, "--zero")) rc = args_int(&a, 0, 1, &f->zero);
        else if (args_is(&a, "--stop-after")) rc = args_int(&a, 1, TRAIN_MAX_STEPS, &f->stop_after);
        else if (args_is(&a, "--layers")) rc = args_int(&a, 1, 256, &f->layers);
        else if (args_is(&a, "--width")) rc = args_int(&a, 2, 65536, &f->width);
        else if (args_is(&a, "--heads")) rc = args_int(&a, 1, 1024, &f->heads);
        else if (args_is(&a, "--hidden")) rc = args_int(&a, 1, 1 << 20, &f->hidden);
        else if (args_is(&a, "--context")) rc = args_int(&a, 1, 1 << 16, &f->context);
        else if (args_is(&a, "--batch")) rc = args_int(&a, 1, TRAIN_MAX_BATCH, &f->batch);
        else if (args_is(&a, "--steps")) rc = args_int(&a, 1, TRAIN_MAX_STEPS, &f->steps);
        else if (args_is(&a, "--warmup")) rc = args_int(&a, 0, TRAIN_MAX_STEPS, &f->warmup);
        else if (args_is(&a, "--grad-accum")) rc = args_int(&a, 1, TRAIN_MAX_GRAD_ACCUM, &f->grad_accum);
        else if (args_is(&a, "--eval-interval")) rc = args_int(&a, 0, TRAIN_MAX_STEPS, &f->eval_interval);
        else if (args_is(&a, "--eval-windows")) rc = args_int(&a, 1, TRAIN_MAX_EVAL_WINDOWS, &f->eval_windows);
        else if (args_is(&a, "--dropout")) rc = args_float(&a, 0.0f, 0.99f, &f->dropout);
        else if (args_is(&a, "--lr")) rc = args_float(&a, TRAIN_MIN_LR, TRAIN_MAX_LR, &f->lr);
        else if (args_is(&a, "--min-lr")) rc = args_float(&a, 0.0f, TRAIN_MAX_LR, &f->min_lr);
        else if (args_is(&a, "--weight-decay")) rc = args_float(&a, 0.0f, TRAIN_MAX_WEIGHT_DECAY, &f->weight_decay);
        else if (args_is(&a, "--beta2")) rc = args_float(&a, 0.0f, TRAIN_MAX_BETA2, &f->beta2);
        else if (args_is(&a, "--grad-clip")) rc = args_float(&a, 0.0f, TRAIN_MAX_GRAD_CLIP, &f->grad_clip);
        else if (args_is(&a, "--seed")) rc = args_u64(&a, &f->seed), f->seed_given = 1;
        else if (args_is(&a, "--mix")) {
            const char *v = args_value(&a);
            char *end = NULL;
            if (!v) rc = -1;
            else {
                if (strncmp(v, "recall:", 7) == 0) f->mix = strtof(v + 7, &end);
                if (!end || end == v + 7 || *end || !(f->mix >= 0.0f && f->mix <= 1.0f)) {
                    err_set(err, "bad --mix '%s': the valid form is recall:F with 0 <= F <= 1", v);
                    return -1;
                }
            }
        }
        else {
            err_set(err, "unknown flag '%s' (see --help)", a.flag);
            return -1;
        }
        if (rc) {
            err_set(err, "%s", a.err);
            return -1;
        }
    }
    if (r < 0) return err_set(err, "%s", a.err), -1;
    if (strcmp(f->device, "cpu") != 0 && strcmp(f->device, "cuda") != 0)
        return err_set(err, "bad --device '%s': valid values are cpu, cuda", f->device), -1;
    if (f->attention && strcmp(f->attention, "naive") != 0 && strcmp(f->attention, "flash") != 0)
        return err_set(err, "bad --attention '%s': valid values are naive, flash", f->attention), -1;
    if (f->precision && ops_precision_parse(f->precision, &f->precision_mode, err) != 0) return -1;
    if (f->precision_mode != OPS_PRECISION_FP32 && strcmp(f->device, "cuda") != 0) {
        err_set(err, "--precision %s needs --device cuda (the cpu backend computes in fp32 only)", f->precision);
        return -1;
    }
    if (f->resume && f->init_from) return err_set(err, "--resume and --init-from cannot be combined"), -1;
    if (f->kv_init && strcmp(f->kv_init, "mean") != 0 && strcmp(f->kv_init, "first") != 0)
        return err_set(err, "bad --kv-init '%s': valid values are mean, first", f->kv_init), -1;
    if (f->kv_init && !f->init_from)
        return err_set(err, "--kv-init applies to --init-from with fewer key/value heads (--attn gqa:G|mqa)"), -1;
    return 0;
}

// With --resume the checkpoint fixes the model and the run's settings; only these may be given.
static int check_resume_flags(const Flags *f, char *err) {
    const char *fixed = NULL;
    if (f->attn) fixed = "--attn";
    else if (f->layers >= 0 || f->width >= 0 || f->heads >= 0 || f->hidden >= 0) fixed = "the model shape";
    else if (f->context >= 0 || f->batch >= 0 || f->dropout >= 0) fixed = "--context/--batch/--dropout";
    else if (f->lr >= 0 || f->min_lr >= 0 || f->warmup >= 0 || f->weight_decay >= 0 || f->beta2 >= 0)
        fixed = "the optimiser settings";
    else if (f->grad_clip >= 0 || f->grad_accum >= 0 || f->seed_given || f->mix >= 0)
        fixed = "--grad-clip/--grad-accum/--seed/--mix";
    if (fixed) return err_set(err, "%s cannot be changed when resuming: the checkpoint fixes it", fixed), -1;
    return 0;
}

static void apply_overrides(const Flags *f, ModelConfig *mc, TrainConfig *tc) {
    if (f->layers >= 0) mc->n_layer = f->layers;
    if (f->width >= 0) mc->n_embd = f->width;
    if (f->heads >= 0) mc->n_head = mc->n_kv_head = f->heads;
    if (f->hidden >= 0) mc->n_hidden = f->hidden;
    if (f->context >= 0) mc->block_size = tc->seq_len = f->context;
    if (f->dropout >= 0) mc->dropout = f->dropout;
    if (f->batch >= 0) tc->batch_size = f->batch;
    if (f->steps >= 0) tc->max_steps = f->steps;
    if (f->warmup >= 0) tc->warmup_steps = f->warmup;
    if (f->grad_accum >= 0) tc->grad_accum = f->grad_accum;
    if (f->eval_interval >= 0) tc->eval_interval = f->eval_interval;
    if (f->eval_windows >= 0) tc->eval_windows = f->eval_windows;
    if (f->lr >= 0) tc->lr = f->lr, tc->min_lr = f->lr / 10;
    if (f->min_lr >= 0) tc->min_lr = f->min_lr;
    if (f->weight_decay >= 0) tc->weight_decay = f->weight_decay;
    if (f->beta2 >= 0) tc->beta2 = f->beta2;
    if (f->grad_clip >= 0) tc->grad_clip = f->grad_clip;
    if (f->seed_given) tc->seed = f->seed;
    if (f->mix >= 0) tc->recall_mix = f->mix;
}

int main(int argc, char **argv) {
    common_runtime_init(argc, argv);
    char err[ERR_LEN];
    if (dist_init(err) != 0) { // before MPI runs: this process says it (empty on all launcher ranks but 0)
        if (err[0]) fprintf(stderr, "train: %s\n", err);
        return 1;
    }
    int root = dist_rank() == 0, ranks = dist_size();
    // zeroed so that the failure path can free whatever was set up
    Model model = {0}, src = {0};
    Tokenizer tok;
    Flags f;
    TrainConfig tc;
    TrainState st = {0};
    ModelConfig mc;
    int have_state = 0, agreed = 0; // agreed: every rank has passed the setup check (dist_agree)
    int told = 0;                   // err came through dist_agree: every rank holds it and stops alike
    Corpus corpus = {0};
    TrainLog log = {0};
    int rc = 0;
    // From here every failure reaches the setup check on every rank (the fail label): a rank that stopped alone
    // would leave the others waiting in their next collective.
    int parsed = parse_flags(&f, argc, argv, err);
    char scratch[ERR_LEN] = "";
    if (dist_agree(parsed == 1, scratch) != 0) { // some rank asked for --help: usage when every rank did
        int everyone = dist_agree(parsed != 1, scratch) == 0;
        if (everyone) {
            if (root) printf("%sthis build: %s\n", usage, dist_about());
            return 0;
        }
        if (parsed == 1) {
            err_set(err, "--help was given to some ranks only (mpirun's per-rank argument lists)");
            goto fail;
        }
    }
    if (parsed != 0) goto fail;
    const Preset *preset = preset_find(f.preset);
    if (!preset) {
        snprintf(err, sizeof(err), "unknown preset '%s': valid presets are %s", f.preset, preset_names());
        goto fail;
    }
    int kv_spec = 0;
    if (f.attn && attn_parse(f.attn, &kv_spec, err) != 0) goto fail;
    tc = preset->train;
    mc = preset->model;
    // each CUDA rank on its own GPU: its index among the ranks of its machine (mod the GPUs; common/device.cu)
    if (ranks > 1 && strcmp(f.device, "cuda") == 0 && !getenv("KVLAB_CUDA_DEVICE")) {
        char local[16];
        snprintf(local, sizeof local, "%d", dist_local_rank());
        setenv("KVLAB_CUDA_DEVICE", local, 1);
    }
    const Ops *backend = ops_for_device(f.device, err); // before any file is read or written
    if (!backend) goto fail;
    if (f.resume) {
        if (check_resume_flags(&f, err) != 0) goto fail;
        if (train_load_checkpoint(f.resume, &model, &ops_cpu, &tok, &tc, &st, &have_state, err) != 0) goto fail;
        if (!have_state) {
            snprintf(err, sizeof(err), "'%s' holds weights only, no training state to resume (use --init-from)", f.resume);
            goto fail;
        }
        if (f.steps >= 0) tc.max_steps = f.steps;
        if (f.eval_interval >= 0) tc.eval_interval = f.eval_interval;
        if (f.eval_windows >= 0) tc.eval_windows = f.eval_windows;
        mc = model.cfg;
    } else if (f.init_from) {
        if (checkpoint_load(f.init_from, &src, &ops_cpu, &tok, NULL, NULL, NULL, err) != 0) goto fail;
        if (f.layers >= 0 || f.width >= 0 || f.heads >= 0 || f.hidden >= 0) {
            err_set(err, "--init-from takes the model shape from the checkpoint; drop --layers/--width/--heads/--hidden");
            goto fail;
        }
        if (f.context >= 0 && f.context < src.cfg.block_size) { // RoPE has no learned positions: extending is fine
            snprintf(err, sizeof(err), "--init-from can only extend the context (checkpoint %d, asked %d)",
                     src.cfg.block_size, f.context);
            goto fail;
        }
        mc = src.cfg;
        int n_kv = mc.n_kv_head;
        if (f.attn && attn_resolve(kv_spec, mc.n_head, &n_kv, err) != 0) goto fail;
        if (f.kv_init && n_kv == mc.n_kv_head) {
            snprintf(err, sizeof(err), "--kv-init: nothing to convert (the checkpoint already has %d key/value heads; "
                     "give --attn gqa:G|mqa with fewer)", n_kv);
            goto fail;
        }
        if (n_kv > mc.n_kv_head) {
            snprintf(err, sizeof(err), "--init-from can only reduce key/value heads (%d -> %d asked)", mc.n_kv_head, n_kv);
            goto fail;
        }
        if (n_kv != mc.n_kv_head) {
            KVInit init = f.kv_init && strcmp(f.kv_init, "first") == 0 ? KV_INIT_FIRST : KV_INIT_MEAN;
            if (model_convert_kv_heads(&model, &src, n_kv, init, err) != 0) goto fail;
            model_free(&src);
        } else {
            model = src;
            src = (Model){0};
        }
        if (f.dropout >= 0) model.cfg.dropout = f.dropout;
        mc = model.cfg;
        apply_overrides(&f, &mc, &tc);
        model.cfg.block_size = mc.block_size;
        tc.seq_len = tc.seq_len > mc.block_size ? mc.block_size : tc.seq_len;
    } else {
        apply_overrides(&f, &mc, &tc);
        if (f.hidden < 0) mc.n_hidden = model_default_hidden(mc.n_embd);
        if (attn_resolve(kv_spec, mc.n_head, &mc.n_kv_head, err) != 0) goto fail;
    }

    // the checkpoint stores the micro-batches of all ranks; flags give them per rank
    if (f.resume && tc.grad_accum % ranks != 0) {
        snprintf(err, sizeof(err), "'%s' was trained with %d micro-batches of %d sequences per step (global batch %d); "
                 "%d ranks cannot split them: resume on a rank count that divides %d", f.resume, tc.grad_accum,
                 tc.batch_size, tc.grad_accum * tc.batch_size, ranks, tc.grad_accum);
        goto fail;
    }
    if (!f.resume) {
        if ((long long)tc.grad_accum * ranks > TRAIN_MAX_GRAD_ACCUM) {
            snprintf(err, sizeof(err), "--grad-accum %d x %d ranks is more than %d micro-batches per step",
                     tc.grad_accum, ranks, TRAIN_MAX_GRAD_ACCUM);
            goto fail;
        }
        tc.grad_accum *= ranks;
    }
    size_t n_oov = 0;
    int fresh = !f.resume && !f.init_from;
    if (!fresh && f.bos && tokenizer_bos_id(&tok) < 0) { // the start symbol is part of the vocabulary
        snprintf(err, sizeof(err), "--bos: '%s' was trained without a start symbol (its vocabulary has no STX), "
                 "and its vocabulary cannot change; train from scratch with --bos", f.resume ? f.resume : f.init_from);
        goto fail;
    }
    int vocab = !fresh ? CORPUS_VOCAB_GIVEN : f.bos ? CORPUS_VOCAB_BUILD_BOS : CORPUS_VOCAB_BUILD;
    if (corpus_load(&corpus, &tok, f.data, vocab, &n_oov, err) != 0) goto fail;
    if (n_oov && root) fprintf(stderr, "train: note: %zu bytes of '%s' are outside the checkpoint's vocabulary and were skipped\n", n_oov, f.data);
    if (fresh) {
        mc.vocab_size = tok.vocab_size;
        if (model_config_validate(&mc, err) != 0) goto fail;
    } else {
        model.cfg.dropout = mc.dropout;
        mc = model.cfg;
    }
    // the settings and the memory they need are checked before the model is allocated
    if (train_config_validate(&tc, &mc, err) != 0) goto fail;
    // flash by default on a device whose flash kernels take this head dimension (the CUDA ones: up to 128)
    int head_dim = model_head_dim(&mc), flash_ok = !backend->flash_max_hd || head_dim <= backend->flash_max_hd;
    ModelAttention attention = f.attention ? (strcmp(f.attention, "flash") == 0 ? MODEL_ATTENTION_FLASH : MODEL_ATTENTION_NAIVE)
                                           : backend->on_device && flash_ok ? MODEL_ATTENTION_FLASH : MODEL_ATTENTION_NAIVE;
    if (attention == MODEL_ATTENTION_FLASH && !flash_ok) {
        snprintf(err, sizeof(err), "--attention flash: the %s flash kernels take head dimensions up to %d, this model's is %d "
                 "(use --attention naive)", backend->name, backend->flash_max_hd, head_dim);
        goto fail;
    }
    if (train_budget_check(&mc, &tc, attention, (double)common_physical_bytes(), err) != 0) goto fail;
    if (fresh) {
        model_init(&model, &mc, &ops_cpu);
        model_init_weights(&model, tc.seed);
    }
    if (corpus_check_context(&corpus, tc.seq_len, err) != 0) goto fail;
    if (tc.recall_mix > 0.0f && recall_check_vocab(&tok, err) != 0) goto fail;
    if (tc.recall_mix > 0.0f && tc.seq_len + 1 < 2 * RECALL_ITEM_LEN + 1) {
        snprintf(err, sizeof(err), "--mix recall needs a context of at least %d tokens", 2 * RECALL_ITEM_LEN);
        goto fail;
    }
    if (f.check_grads) {
        if (ranks > 1) {
            err_set(err, "--check-grads runs in one process, not under mpirun -np %d", ranks);
            goto fail;
        }
        rc = check_grads(&model, backend, attention, f.precision_mode, &tc, &corpus, err);
        if (rc < 0) goto fail;
        goto done;
    }
    if (!f.resume) train_state_init(&st, model.n_params, tc.seed);
    if (st.step >= tc.max_steps) {
        snprintf(err, sizeof(err), "the checkpoint is already at step %d of %d; give --steps N with N > %d to continue",
                 st.step, tc.max_steps, st.step);
        goto fail;
    }
    if (f.stop_after >= 0 && f.stop_after <= st.step) {
        snprintf(err, sizeof(err), "--stop-after %d is not past the checkpoint's step %d", f.stop_after, st.step);
        goto fail;
    }

    char attn[32], out_default[256];
    attn_label(attn, sizeof(attn), model.cfg.n_head, model.cfg.n_kv_head);
    const char *run_name = f.resume ? "resumed" : f.init_from ? "uptrained" : f.preset;
    snprintf(out_default, sizeof(out_default), "checkpoints/%s-%s.ckpt", run_name, attn);
    const char *out = f.out ? f.out : (f.resume ? f.resume : out_default);
    int target = root ? checkpoint_check_target(out, f.force, err) : 0; // rank 0 writes it
    if (target == -2) {
        size_t n = strlen(err);
        snprintf(err + n, sizeof(err) - n, " (--force replaces it)");
    }
    if (target != 0) goto fail;
    if (f.zero && train_zero_check(model.n_params, err) != 0) goto fail;
    if (f.log && root && train_log_open(&log, f.log, f.resume != NULL, err) != 0) goto fail;
    int last = f.stop_after > 0 && f.stop_after < tc.max_steps ? f.stop_after : tc.max_steps;
    agreed = 1; // every rank is set up, or learns here which one is not
    told = 1;   // and the failures up to the loop are every rank's (dist_agree)
    if (dist_agree(0, err) != 0) goto fail;
    // the settings that decide which collectives run, and their sizes, must match too
    RankSettings settings = {.zero = f.zero, .last = last, .max_steps = tc.max_steps,
                             .eval_interval = tc.eval_interval, .on_device = backend->on_device,
                             .precision = f.precision_mode, .attention = attention, .batch = tc.batch_size,
                             .grad_accum = tc.grad_accum, .seq_len = tc.seq_len};
    if (train_ranks_check(&corpus, &model, &st, &tc, &settings, f.data, err) != 0) goto fail;
    if (f.zero) train_state_shard(&st, model.n_params, dist_rank(), ranks);
    if (f.zero && ranks == 1)
        fprintf(stderr, "train: note: --zero 1 shards the optimizer state over the ranks of mpirun; one process "
                "keeps all of it (the same training)\n");

    if (root)
        fprintf(stderr, "train: %s, %d layers, %d heads, %d kv heads (%s), width %d, hidden %d, context %d, %.2fM params, %s, "
                "%s attention on %s, %s products\n", run_name, model.cfg.n_layer, model.cfg.n_head, model.cfg.n_kv_head,
                attn, model.cfg.n_embd, model.cfg.n_hidden, tc.seq_len, model.n_params / 1e6, common_blas_kernels(),
                attention == MODEL_ATTENTION_FLASH ? "flash" : "naive", backend->name, ops_precision_name(f.precision_mode));
    char bos_note[48] = "";
    if (corpus_bos(&corpus) >= 0) snprintf(bos_note, sizeof(bos_note), " (start symbol STX, id %d)", corpus_bos(&corpus));
    char batch[128];
    if (ranks == 1) snprintf(batch, sizeof(batch), "batch %d x grad-accum %d", tc.batch_size, tc.grad_accum);
    else
        snprintf(batch, sizeof(batch), "batch %d x grad-accum %d x %d ranks = %d sequences per step%s", tc.batch_size,
                 tc.grad_accum / ranks, ranks, tc.batch_size * tc.grad_accum, f.zero ? ", ZeRO-1" : "");
    if (root)
        fprintf(stderr, "train: %zu train / %zu val tokens, vocab %d%s, %s, steps %d..%d, checkpoint %s\n",
                corpus.n_train, corpus.n_tokens - corpus.n_train, tok.vocab_size, bos_note, batch, st.step,
                tc.max_steps, out);

    model_to_backend(&model, backend);
    train_state_to_backend(&st, model.n_params, backend);
    // after the weights reached the backend: in bf16 it keeps their bf16 copy from here on
    if (dist_agree(backend->precision_set(f.precision_mode, model.params_memory, model.n_params, err) != 0, err) != 0)
        goto fail;
    model.attention = attention;
    model_alloc_acts(&model, tc.batch_size, tc.seq_len);
    TrainRun loop = {.model = &model, .st = &st, .tc = &tc, .corpus = &corpus, .tok = &tok, .out = out,
                    .log = &log, .last = last, .quiet = f.quiet || !root};
    rc = train_run_loop(&loop, err); // a failure in it is every rank's (dist_agree)
    if (rc != 0) goto fail;
    told = 0; // the log is rank 0's alone
    if (train_log_close(&log, err) != 0) goto fail;
    if (root) fprintf(stderr, "train: done: step %d, train loss %.4f, val loss %.4f, %.1f s, %.0f tokens/s, saved %s\n",
            st.step, loop.train_loss, loop.val_loss, loop.elapsed, loop.tokens_per_s, out);
    if (0) {
    fail:
        if (!agreed) { // the setup failed here: the other ranks learn it at their setup check (dist_agree)
            agreed = 1;
            told = 1;
            dist_agree(1, err);
        }
        if (!told && ranks > 1) { // this rank alone knows: it says why and ends the job (MPI_Abort)
            fprintf(stderr, "train: rank %d: %s\n", dist_rank(), err);
            dist_abort(1);
        }
        if (root) fprintf(stderr, "train: %s\n", err);
        rc = 1;
    }
done:
    train_log_close(&log, NULL);
    train_state_free(&st);
    corpus_free(&corpus);
    model_free(&src);
    model_free(&model);
    return rc;
}
