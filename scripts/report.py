#!/usr/bin/env python3
"""Reproduces the course report on KV-cache management on models trained here, tier by tier: `ninja report`.

Every number in report/REPORT.md comes from this run: the script trains the models, runs the evaluations
through build/train, build/infer and build/bench, keeps each step's raw output as JSON lines under
report/raw/, writes the exact commands to report/commands.sh, draws the plots with gnuplot (pngcairo) and the
attention heat maps with build/infer (stb_image_write), and writes the report.

  python3 scripts/report.py [--quick | --full] [--fresh] [--device cpu|cuda] [--out DIR]

--quick (the default) takes about 11 minutes on a 2-core CPU (10 min 42 s measured from scratch); --full is the GPU scale (longer training,
the trained contexts of BENCHMARKS.md, more heads; 28 min on the same CPU). Seeds are fixed, so a rerun gives the same numbers up to
timing noise. A run that stops (Ctrl-C, a crash) resumes where it stopped: finished steps are kept in
report/raw/ (a step counts as finished once its output file is complete), an interrupted training run
continues from its last checkpoint with build/train --resume. --fresh starts over.
"""
import argparse
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = 'build'  # --bin: the build directory whose programs run

# ---- scales --------------------------------------------------------------------------------------------------

SCALES = {
    'quick': dict(
        # tier 1: the recall recipe of BENCHMARKS.md ("Long-range recall"), shortened: a dense-copy warm-up at
        # context 64, then half recall, half text at context 128
        warmup=['--preset', 'baby', '--mix', 'recall:1.0', '--steps', '4500'],  # the copy forms near step 2000
        recall=['--context', '128', '--batch', '12', '--mix', 'recall:0.5', '--steps', '1500'],
        context=128, streams=8, recall_per_distance=20, stream_factor=16,
        # tier 2: the baby shape with 8 heads of 16 (MHA, GQA with 4 and 2 groups, MQA), equal steps
        attn_preset=['--preset', 'baby', '--heads', '8', '--steps', '1500'], attn=['mha', 'gqa:4', 'gqa:2', 'mqa'],
        convert=[4, 2, 1], uptrain_steps=75,  # 5% of the pretraining steps (the GQA paper's alpha)
        bench_t='128,256,512,1024,2048,4096',
    ),
    'smoke': dict(  # checks the pipeline in a few minutes; its numbers mean nothing
        warmup=['--preset', 'baby', '--steps', '60'], recall=['--context', '128', '--batch', '4', '--mix', 'recall:0.5', '--steps', '20'],
        context=128, streams=2, recall_per_distance=2, stream_factor=4,
        attn_preset=['--preset', 'baby', '--steps', '40'], attn=['mha', 'gqa:2', 'mqa'], convert=[2, 1], uptrain_steps=4,
        bench_t='64,128,256',
    ),
    'full': dict(
        warmup=['--preset', 'baby', '--mix', 'recall:1.0', '--steps', '4500'],
        recall=['--context', '256', '--batch', '16', '--mix', 'recall:0.5', '--steps', '2500'],
        context=256, streams=8, recall_per_distance=20, stream_factor=16,
        attn_preset=['--preset', 'small'], attn=['mha', 'gqa:8', 'gqa:4', 'gqa:2', 'mqa'], convert=[8, 4, 1],
        uptrain_steps=60,
        bench_t='128,256,512,1024,2048,4096,8192',
    ),
}


# ---- running steps ---------------------------------------------------------------------------------------------

class Runner:
    """Runs the report's steps in order, skipping the finished ones, with a progress line for each."""

    def __init__(self, out, total, env):
        self.out, self.total, self.env, self.n = out, total, env, 0
        self.raw = os.path.join(out, 'raw')
        self.work = os.path.join(out, 'work')
        self.commands = []
        self.t0 = time.time()
        os.makedirs(self.raw, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(os.path.join(out, 'img'), exist_ok=True)

    def _progress(self, what, status):
        self.n += 1
        elapsed = time.time() - self.t0
        print('[%3d/%d %5.0fs] %-10s %s' % (self.n, self.total, elapsed, status, what), flush=True)

    def _signature(self, cmds):
        """What a step's results depend on: its commands and the checkpoints they read (by modification time)."""
        h = hashlib.sha256()
        for cmd in cmds:
            h.update(('\0'.join(cmd) + '\n').encode())
            for c in cmd:
                if c.endswith('.ckpt') and os.path.exists(os.path.join(ROOT, c)):
                    h.update(str(os.stat(os.path.join(ROOT, c)).st_mtime_ns).encode())
        return h.hexdigest()

    def _run(self, cmd, stdout=None, ok_if=None, show=False):
        """Runs cmd from the repository root: its stdout to the file stdout (or nowhere), or with show, every line
        it prints echoed as it comes (training's validation lines: progress within a long step). A failure stops
        the report with the command and its last words, unless they contain ok_if."""
        # evaluations run single-threaded: on these small models OpenMP's fork/join costs more than it gives
        # (BENCHMARKS.md measures the same way); training uses every core
        env = dict(self.env, OMP_NUM_THREADS='1') if not cmd[0].endswith('/train') else self.env
        prefix = 'OMP_NUM_THREADS=1 ' if not cmd[0].endswith('/train') else ''
        self.commands.append(prefix + ' '.join(shlex.quote(c) for c in cmd) +
                             (' > ' + os.path.relpath(stdout, ROOT) if stdout else ''))
        if show:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, bufsize=1)
            last = []
            for line in proc.stdout:
                print('             ' + line.rstrip(), flush=True)
                last = (last + [line])[-20:]
            rc, said = proc.wait(), ''.join(last)
        else:
            with open(stdout, 'w') if stdout else open(os.devnull, 'w') as f:
                p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.PIPE, text=True)
            rc, said = p.returncode, p.stderr
        if rc != 0 and not (ok_if and ok_if in said):
            sys.exit('report: step failed (exit %d): %s\n%s' % (rc, ' '.join(cmd), said.strip()[-2000:]))

    def json_step(self, name, what, cmds):
        """Runs each command (its stdout: JSON lines) and keeps their output together as raw/NAME.jsonl."""
        path = os.path.join(self.raw, name + '.jsonl')
        sig_path = os.path.join(self.raw, name + '.sig')
        sig = self._signature(cmds)
        old = open(sig_path).read().strip() if os.path.exists(sig_path) else None
        if os.path.exists(path) and old == sig:
            self._progress(what, 'kept')
            self.commands.extend('# kept: ' + ' '.join(shlex.quote(c) for c in c_) for c_ in cmds)
            return read_jsonl(path)
        t = time.time()
        tmp = path + '.part'
        with open(tmp, 'w') as out:
            for cmd in cmds:
                part = tmp + '.1'
                self._run(cmd, part)
                with open(part) as f:
                    for line in f:
                        if line.strip().startswith('{'):
                            out.write(line)
                os.remove(part)
        os.replace(tmp, path)
        with open(sig_path, 'w') as f:  # commands or checkpoints changed since: the step reruns
            f.write(sig + '\n')
        self._progress('%s (%.1f s)' % (what, time.time() - t), 'done')
        return read_jsonl(path)

    def train_step(self, name, what, args):
        """build/train to work/NAME.ckpt with a JSON-lines log raw/train-NAME.jsonl; resumes an interrupted run."""
        ckpt = os.path.join(self.work, name + '.ckpt')
        log = os.path.join(self.raw, 'train-' + name + '.jsonl')
        done, given = ckpt + '.done', ckpt + '.args'
        want = '\0'.join(args)
        if (open(given).read() if os.path.exists(given) else None) != want:  # new, or its settings changed
            for f in (ckpt, done, log):
                if os.path.exists(f):
                    os.remove(f)
            with open(given, 'w') as f:
                f.write(want)
        if os.path.exists(done):
            self._progress(what, 'kept')
            self.commands.append('# kept: build/train ' + ' '.join(shlex.quote(a) for a in args))
            return ckpt
        t = time.time()
        if os.path.exists(ckpt):  # an earlier run stopped after a checkpoint: continue it exactly
            cmd = [BIN + '/train', '--resume', ckpt, '--out', ckpt, '--log', log] + data_args(args)
        else:
            cmd = [BIN + '/train'] + args + ['--out', ckpt, '--log', log]
        # its progress shows (a live line on a terminal, validation lines otherwise); a run stopped after its
        # last checkpoint but before .done: train says so, and the run is complete
        print('             training: %s' % what, flush=True)
        self._run(cmd, ok_if='the checkpoint is already at step', show=True)
        open(done, 'w').close()
        self._progress('%s (%.1f s)' % (what, time.time() - t), 'done')
        return ckpt

    def file_step(self, name, what, cmd, outputs):
        """A command whose outputs are files (images); done when they all exist."""
        if all(os.path.exists(o) for o in outputs):
            self._progress(what, 'kept')
            return
        t = time.time()
        self._run(cmd)
        self._progress('%s (%.1f s)' % (what, time.time() - t), 'done')


def data_args(args):
    """The flags a resumed run still needs (the checkpoint fixes the rest): --data and --device."""
    keep = ('--data', '--device')
    return [a for i, a in enumerate(args) if a in keep or (i > 0 and args[i - 1] in keep)]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def train_log(path):
    """The last entry per step (a resumed run appends steps again)."""
    by_step = {}
    for r in read_jsonl(path):
        by_step[r['step']] = r
    return [by_step[s] for s in sorted(by_step)]


# ---- plots -----------------------------------------------------------------------------------------------------

def gnuplot(out_png, script, data, work, size='900,560'):
    """Draws one PNG: data is {name: rows}; the script refers to each as 'NAME.dat' in work/plot/."""
    d = os.path.join(work, 'plot')
    os.makedirs(d, exist_ok=True)
    for name, rows in data.items():
        with open(os.path.join(d, name + '.dat'), 'w') as f:
            for r in rows:
                f.write(' '.join(str(x) for x in r) + '\n') if r is not None else f.write('\n\n')
    gp = os.path.join(d, os.path.basename(out_png) + '.gp')
    with open(gp, 'w') as f:
        f.write("set terminal pngcairo size %s font 'sans,11'\nset output '%s'\n" % (size, os.path.abspath(out_png)))
        f.write("set grid\nset key outside right\n" + script)
    p = subprocess.run(['gnuplot', os.path.basename(gp)], cwd=d, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit('report: gnuplot failed on %s:\n%s' % (gp, p.stderr))


# ---- formatting ------------------------------------------------------------------------------------------------

def pct(x, ref):
    return '%+.2f%%' % (100.0 * (x / ref - 1.0))


def table(header, rows):
    out = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    out += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(out)


def by_spec(rows):
    return {r['spec']: r for r in rows}



# ---- the report ------------------------------------------------------------------------------------------------

def write_report(out, sc, scale, res, R):
    C = sc['context']
    img = os.path.join(out, 'img')
    work = R.work
    md = []
    w = md.append
    full_q, full_r = res['full'][0], res['full'][1]
    ppl_full = full_q['ppl_full']
    fp16 = full_q['fp16_bytes_per_token']
    w('# KV-cache management, reproduced on kvlab models\n')
    w('Generated by `python3 scripts/report.py --%s` (`ninja report`); every number below comes from that run. '
      'Raw results: [raw/](raw/) (JSON lines, one file per step); the exact commands: [commands.sh](commands.sh). '
      'Seeds are fixed: a rerun gives the same numbers up to timing noise (tokens/s, ms). Timings are from a '
      'CPU (%s), single process; the models are character-level and tiny (under a million parameters), so '
      'read the trends, not the absolute values.\n' % (scale, os.cpu_count() and '%d cores' % os.cpu_count()))
    w('![KV memory against perplexity](img/tier1-memory-ppl.png)\n')

    # ---- tier 1 ----
    w('## Tier 1: token level\n')
    w('**The question:** at a fixed KV memory budget, which tokens should a cache keep, and how should it '
      'store them, to stay closest to the full cache (perplexity, KL, top-1 agreement) and keep what a '
      'long-range task needs (recall)?\n')
    log = train_log(os.path.join(R.raw, 'train-recall.jsonl'))
    vals = [r for r in log if 'val_loss' in r]
    w('Model: the recall recipe (a dense-copy warm-up, then half recall sequences, half Shakespeare) at context '
      '%d, %d steps in all; final validation loss %.4f. Streaming eval: %d streams of %d tokens of the '
      'validation split, scoring after %d; recall: %d sequences per distance. Full cache: perplexity %.4f, '
      'recall %.3f (%.3f of value characters).\n' % (
          C, len(train_log(os.path.join(R.raw, 'train-recall-warmup.jsonl'))) + len(log),
          vals[-1]['val_loss'] if vals else float('nan'), sc['streams'], C, C // 2, sc['recall_per_distance'],
          ppl_full, full_r['recall_acc'], full_r['recall_char_acc']))
    specs = tier1_specs(C)
    q = by_spec(res['t1_quality'])
    rc = by_spec(res['t1_recall'])
    rows, plot = [], {}
    for b, name, spec in specs:
        a, r = q[spec], rc[spec]
        rows.append(['`%s`' % spec, b, '%.3fx' % (a['bytes_per_token'] / fp16), '%.4f' % a['ppl'], pct(a['ppl'], ppl_full),
                     '%.2e' % a['kl'], '%.3f' % a['top1_agree'], '%.2f' % r['recall_acc'], '%.3f' % r['recall_char_acc']])
        plot.setdefault(name, []).append((a['bytes_per_token'] / fp16, 100 * (a['ppl'] / ppl_full - 1), r['recall_acc'], b))
    w('### Selection policies across budgets\n')
    w(table(['spec', 'budget (tokens)', 'KV bytes vs fp16', 'ppl', 'Δppl', 'KL', 'top-1', 'recall', 'recall chars'], rows) + '\n')
    w('Bytes are what each cache holds at the end of a stream (positions and scores included) against a full '
      'fp16 cache (%.0f bytes/token); caches here are fp32, so the full cache is 2x. `l2norm` keeps its first '
      'two layers whole, and SnapKV compresses once at the end of the prompt and then appends every decoded token, '
      'so both hold more than their budget at the end of a stream.\n' % fp16)
    names = list(plot)
    stor = by_spec(res['storage'])
    data = {n.replace('+', '_'): sorted(plot[n]) for n in names}
    data['storage'] = [(stor[s]['bytes_per_token'] / fp16, 100 * (stor[s]['ppl'] / ppl_full - 1), s.replace('full+', ''))
                       for s in storage_specs(C)]
    # a log scale for the cost; a change of 0.01% or less (or a gain) is drawn at the floor
    lines = ', '.join("'%s.dat' u 1:($2>0.01?$2:0.01) w lp pt 7 t '%s'" % (n.replace('+', '_'), n) for n in names)
    gnuplot(os.path.join(img, 'tier1-memory-ppl.png'),
            "set title 'Tier 1: KV memory against perplexity (context %d)'\n"
            "set xlabel 'KV bytes held / full fp16 cache'\nset ylabel 'perplexity increase vs full cache (%%)'\n"
            "set logscale y\nset yrange [0.008:*]\nset key outside right top reverse Left font ',10'\n"
            "set label 'at the floor: 0.01%% or less' at graph 0.02, graph 0.04 font ',9' tc 'gray40'\n"
            "plot %s, 'storage.dat' u 1:($2>0.01?$2:0.01) w p pt 5 ps 1.2 lc 'gray40' t 'storage terms (full selection)', "
            "'storage.dat' u 1:($2>0.01?$2:0.01):3 w labels font ',8' offset 0,0.7 tc 'gray40' notitle\n" % (C, lines),
            data, work, size='1100,600')
    gnuplot(os.path.join(img, 'tier1-recall.png'),
            "set title 'Tier 1: recall against budget (context %d)'\nset xlabel 'budget (tokens per layer and head)'\n"
            "set ylabel 'recall (exact)'\nset yrange [0:1.05]\nset logscale x 2\n"
            "plot %s, %.3f w l dt 2 lc 'black' t 'full cache'\n" % (
                C, ', '.join("'%s.dat' u 4:3 w lp pt 7 t '%s'" % (n.replace('+', '_'), n) for n in names), full_r['recall_acc']),
            data, work)
    w('![recall against budget](img/tier1-recall.png)\n')
    # recall by distance at 1/4
    b4 = C // 4
    dist_rows = []
    for b, name, spec in [(0, 'full', 'full')] + [s for s in specs if s[0] == b4]:
        r = full_r if spec == 'full' else rc[spec]
        d = r['recall_acc_by_distance']
        dist_rows.append(['`%s`' % spec] + ['%.2f' % d[k] for k in sorted(d, key=int)])
    w('Recall by distance between the definition and the query, budget %d (a quarter of the context):\n' % b4)
    w(table(['spec'] + ['d=%s' % k for k in sorted(full_r['recall_acc_by_distance'], key=int)], dist_rows) + '\n')
    # conclusions from the numbers
    at = {name: q[spec] for b, name, spec in specs if b == b4}
    best = min(at, key=lambda n: at[n]['ppl'])
    worst = max(at, key=lambda n: at[n]['ppl'])
    rat = {name: rc[spec]['recall_acc'] for b, name, spec in specs if b == b4}
    far = max(full_r['recall_acc_by_distance'], key=int)
    far_ok = [name for b, name, spec in specs if b == b4 and rc[spec]['recall_acc_by_distance'][far] >= 0.5]
    w('### Streaming far past the cache (StreamingLLM)\n')
    st = by_spec(res['stream'])
    win, sink = st['window:%d' % (C // 2)], st['sink:4,window:%d' % (C // 2 - 4)]
    data = {'win': list(zip(win['curve_position'], win['curve_ppl'])), 'sink': list(zip(sink['curve_position'], sink['curve_ppl'])),
            'full': list(zip(win['curve_position'], win['curve_ppl_full']))}
    gnuplot(os.path.join(img, 'tier1-streaming.png'),
            "set title 'Streaming %d tokens through a cache of %d (trained context %d)'\nset xlabel 'position'\n"
            "set ylabel 'perplexity'\nset logscale y\nset arrow from %d, graph 0 to %d, graph 1 nohead dt 2\n"
            "plot 'win.dat' w lp pt 7 t 'window:%d', 'sink.dat' w lp pt 5 t 'sink:4,window:%d', "
            "'full.dat' w lp pt 9 t 'full cache'\n" % (win['context'], C // 2, C, C, C, C // 2, C // 2 - 4), data, work)
    w('![perplexity against position](img/tier1-streaming.png)\n')
    w(table(['spec', 'tokens', 'ppl (whole stream)', 'ppl last 1/16', 'full cache ppl last 1/16', 'bytes/token'],
            [['`%s`' % x['spec'], x['context'], '%.4f' % x['ppl'], '%.4f' % x['curve_ppl'][-1], '%.4f' % x['curve_ppl_full'][-1],
              '%.0f' % x['bytes_per_token']] for x in (win, sink)]) + '\n')
    ratio = win['curve_ppl'][-1] / sink['curve_ppl'][-1]
    w('### Storage: quantization, low rank, cross-layer merging\n')
    srows = []
    sr = by_spec(res['storage_recall'])
    for s in storage_specs(C):
        a = stor[s]
        srows.append(['`%s`' % s, '%.3fx' % (a['bytes_per_token'] / fp16), '%.4f' % a['ppl'], pct(a['ppl'], ppl_full),
                      '%.2e' % a['kl'], '%.3f' % a['top1_agree'], '%.2f' % sr[s]['recall_acc'] if s in sr else ''])
    w(table(['spec', 'KV bytes vs fp16', 'ppl', 'Δppl', 'KL', 'top-1', 'recall'], srows) + '\n')
    w('Per-token formats (`int8/int4/int2`) quantize each token\'s key and value rows in groups of channels; '
      'KIVI quantizes keys per channel over groups of tokens and keeps the newest in fp32 (group and residual '
      'scaled to this context: `%s`); low rank keeps R coefficients per head on a calibrated basis (head dimension %d); '
      'MiniCache merges layer pairs from layer 2.\n' % (storage_specs(C)[6], 32))  # the recall model is baby-shaped
    i8, i4, i2 = stor['full+int8'], stor['full+int4'], stor['full+int2']
    k2 = stor[storage_specs(C)[7]]
    w('### What the numbers say\n')
    w('- At a quarter of the context, the best policy by perplexity is **%s** (%s, recall %.2f, holding %.2fx of a '
      'full fp16 cache) and the worst **%s** (%s, recall %.2f, holding %.2fx). Recall at the longest distance (%s '
      'tokens) survives in: %s.' % (
          best, pct(at[best]['ppl'], ppl_full), rat[best], at[best]['bytes_per_token'] / fp16, worst,
          pct(at[worst]['ppl'], ppl_full), rat[worst], at[worst]['bytes_per_token'] / fp16, far,
          ', '.join(far_ok) if far_ok else 'no policy at this budget'))
    wins = [name for name in at if q_by(rc, specs, b4, name)['recall_acc'] > rat.get('window', 0)]
    w('- Perplexity and recall disagree: a policy can stay close to the full cache on text and still drop the one '
      'definition a query needs. Better recall than the plain window at this budget: %s. The papers\' attention-'
      'based policies (H2O, TOVA, SnapKV) keep what was attended so far, which a definition nobody has asked about '
      'yet has not been.' % (', '.join(wins) if wins else 'none'))
    w('- Streaming %d tokens (%dx the trained context) through %d cached tokens: window-only ends at perplexity %.3f, '
      'sink+window at %.3f (%.2fx). %s' % (win['context'], win['context'] // C, C // 2, win['curve_ppl'][-1],
                                          sink['curve_ppl'][-1], ratio,
          'As in StreamingLLM, keeping the first tokens matters once they leave the window.' if ratio > 1.5 else
          'Unlike StreamingLLM (window-only perplexity in the thousands on Llama-2), window-only does not collapse '
          'here: these small models grow weak attention sinks (see the heat maps), a difference from the paper, '
          'not a bug (BENCHMARKS.md measured the same on the 256-token models).'))
    w('- The full cache itself degrades past the trained context (last bucket %.3f): RoPE positions it never saw.' % win['curve_ppl_full'][-1])
    w('- int8 costs %s at %.2fx of fp16 (llama.cpp reports +0.005 ppl for q8_0 K+V); int4 %s at %.2fx; int2 %s at %.2fx, '
      'and KIVI-2 %s at %.2fx: the per-channel key layout is what makes 2 bits usable, as the KIVI paper argues.\n' % (
          pct(i8['ppl'], ppl_full), i8['bytes_per_token'] / fp16, pct(i4['ppl'], ppl_full), i4['bytes_per_token'] / fp16,
          pct(i2['ppl'], ppl_full), i2['bytes_per_token'] / fp16, pct(k2['ppl'], ppl_full), k2['bytes_per_token'] / fp16))
    heat_section(md, res, C)

    # ---- tier 2 ----
    w('## Tier 2: model level\n')
    w('**The question:** how much KV memory does sharing key/value heads across query heads save (GQA, MQA), '
      'what does it cost in quality when trained from scratch, and can a trained MHA model be converted '
      '(the GQA paper\'s mean-pooling plus a little uptraining)?\n')
    arows, data = [], {}
    for attn in sc['attn']:
        e, e_long = res['attn'][attn]
        lg = train_log(os.path.join(R.raw, 'train-attn-%s.jsonl' % attn.replace(':', '')))
        vl = [r for r in lg if 'val_loss' in r]
        data['train_' + attn.replace(':', '')] = [(r['step'], r['train_loss']) for r in lg[::10]]
        data['val_' + attn.replace(':', '')] = [(r['step'], r['val_loss']) for r in vl]
        arows.append(['`%s`' % attn, '%.4f' % vl[-1]['val_loss'], '%.4f' % e['ppl_full'], '%.0f' % e['fp16_bytes_per_token'],
                      '%.0f' % e['decode_tokens_per_s'], '%.0f' % e_long['decode_tokens_per_s']])
    w(table(['attention', 'val loss', 'ppl (streaming)', 'KV bytes/token (fp16)', 'decode tok/s (ctx %d)' % res['attn'][sc['attn'][0]][0]['context'],
             'decode tok/s (ctx 1024)'], arows) + '\n')
    plots = ', '.join("'train_%s.dat' w l t '%s train', 'val_%s.dat' w lp pt 7 t '%s val'" % (a.replace(':', ''), a, a.replace(':', ''), a)
                      for a in sc['attn'])
    top = max(float(r[1]) for r in arows) + 0.6  # the warm-up's first losses would flatten the curves
    gnuplot(os.path.join(img, 'tier2-loss.png'), "set title 'Tier 2: MHA vs GQA vs MQA, equal steps'\nset xlabel 'step'\n"
            "set ylabel 'loss (nats/token)'\nset yrange [*:%.2f]\nplot %s\n" % (top, plots), data, work)
    w('![loss curves](img/tier2-loss.png)\n')
    crows = []
    mha_ppl = res['attn'][sc['attn'][0]][0]['ppl_full']
    for G, v in res['convert'].items():
        p0, p1 = v['pooled'][0]['ppl_full'], v['uptrained'][0]['ppl_full']
        crows.append(['MHA → %d kv heads' % G, '%.4f (%s)' % (p0, pct(p0, mha_ppl)), '%.4f (%s)' % (p1, pct(p1, mha_ppl)),
                      '%.0f' % v['pooled'][0]['fp16_bytes_per_token']])
    w('Conversion of the trained MHA model (perplexity %.4f): key/value heads mean-pooled into groups, evaluated '
      'as is and after %d uptraining steps (5%% of the %s pretraining steps, the paper\'s α):\n' % (
          mha_ppl, sc['uptrain_steps'], sc['attn_preset'][-1] if sc['attn_preset'][-2] == '--steps' else 'preset'))
    w(table(['conversion', 'ppl, mean-pooled', 'ppl, uptrained', 'KV bytes/token (fp16)'], crows) + '\n')
    w('### What the numbers say\n')
    first, last = arows[0], arows[-1]
    w('- From scratch with equal steps: %s reaches validation loss %s, %s %s, with %s of the KV bytes per token '
      '(the MQA paper: 29.9 → 30.2 perplexity on a far larger model).' % (
          sc['attn'][0], first[1], sc['attn'][-1], last[1], '1/%d' % round(float(first[3]) / float(last[3]))))
    G0 = list(res['convert'])[0]
    v0 = res['convert'][G0]
    w('- Mean-pooling without training costs %s; %d steps of uptraining bring it to %s. The GQA paper recovers '
      'close-to-MHA quality with 5%% of pretraining on T5-XXL; at our scale the heads are narrow (and few), so pooling '
      'loses more.\n' % (pct(v0['pooled'][0]['ppl_full'], mha_ppl), sc['uptrain_steps'], pct(v0['uptrained'][0]['ppl_full'], mha_ppl)))

    # ---- tier 3 ----
    w('## Tier 3: system level\n')
    w('**The question:** where does attention spend memory and memory traffic, and what do systems do about it: '
      'tiled attention that never materialises the T×T matrix (FlashAttention), paged caches with prefix '
      'sharing, a slower tier with prefetch, and reuse across requests?\n')
    flash_section(md, res, img, work)
    system_section(md, res, C, fp16, ppl_full)
    with open(os.path.join(out, 'REPORT.md'), 'w') as f:
        f.write('\n'.join(md) + '\n')


def q_by(rows, specs, b, name):
    return rows[[spec for bb, n, spec in specs if bb == b and n == name][0]]


def heat_section(md, res, C):
    md.append('### Attention patterns: sinks and heavy hitters\n')
    rows = res.get('heat') or []
    layers = [r for r in rows if r.get('type') == 'attn_layer']
    summ = [r for r in rows if r.get('type') == 'attn_summary']
    u = summ[0]['uniform'] if summ else {}
    f = lambda d, k: '%.3f' % d[k]
    md.append('%d tokens of the validation text through the full cache; statistics over rows t ≥ %d, mean over heads '
              '(the most extreme head in brackets), against what uniform attention would give at this length:\n' % (
                  C, summ[0]['first_row'] if summ else 16))
    md.append(table(['layer', 'on token 0', 'on tokens 0-3', 'top 10% keys (H2O score)', 'last 16 keys'],
                    [[r['layer']] + ['%s (%s)' % (f(r['mean'], k), f(r['max'], k)) for k in ('sink1', 'sink4', 'heavy', 'recent')]
                     for r in layers] + ([['uniform'] + [f(u, k) for k in ('sink1', 'sink4', 'heavy', 'recent')]] if u else [])) + '\n')
    md.append('Each image: one layer, its heads left to right; row t is what token t paid to keys 0..t (the future '
              'grey); log colour scale from 1e-3 (dark) to 1 (yellow). ![summary](img/attn-summary.png)\n')
    for l in range(len(layers)):
        md.append('![layer %d](img/attn-layer%d.png)' % (l, l))
    md.append('')
    if summ:
        m = summ[0]['max']
        sink_note = ('A head with a clear sink exists (up to %.2f of its attention on token 0, %.1fx uniform).' % (m['sink1'], m['sink1'] / u['sink1'])
                     if m['sink1'] > 3 * u['sink1'] else
                     'No head puts much more than uniform attention on token 0: these models grew no attention sink, '
                     'unlike the large models of StreamingLLM, whose first tokens soak up most of the attention.')
        heavy = summ[0]['mean']['heavy']
        md.append('%s %s: the top 10%% of keys take %.3f of the attention on average (%.3f for the most concentrated '
                  'head) against %.3f for uniform attention%s; the last 16 keys take %.3f against %.3f.\n' % (
                      sink_note, 'Heavy hitters do show' if heavy > 1.2 * u['heavy'] else 'Heavy hitters barely show',
                      heavy, m['heavy'], u['heavy'], ', the skew H2O relies on' if heavy > 1.2 * u['heavy'] else '',
                      summ[0]['mean']['recent'], u['recent']))


def flash_section(md, res, img, work):
    rows = res['flash']
    nv = sorted((r for r in rows if r.get('algo') == 'naive'), key=lambda r: r['T'])
    fl = sorted((r for r in rows if r.get('algo') == 'flash'), key=lambda r: r['T'])
    md.append('### Flash against naive attention (CPU, measured)\n')
    md.append(table(['T', 'naive ms', 'flash ms', 'naive intermediate bytes', 'flash intermediate bytes',
                     'naive bytes moved (formula)', 'flash bytes moved (formula)', 'max |diff|'],
                    [[a['T'], '%.2f' % a['ms'], '%.2f' % b['ms'], a['intermediate_bytes'], b['intermediate_bytes'],
                      '%d (%d)' % (a['bytes_moved'], a['bytes_formula']), '%d (%d)' % (b['bytes_moved'], b['bytes_formula']),
                      '%.1e' % b['max_abs_diff']] for a, b in zip(nv, fl)]) + '\n')
    data = {'nmem': [(r['T'], r['intermediate_bytes']) for r in nv], 'fmem': [(r['T'], r['intermediate_bytes']) for r in fl],
            'nio': [(r['T'], r['bytes_moved']) for r in nv], 'fio': [(r['T'], r['bytes_moved']) for r in fl],
            'nf': [(r['T'], r['bytes_formula']) for r in nv], 'ff': [(r['T'], r['bytes_formula']) for r in fl]}
    gnuplot(os.path.join(img, 'tier3-flash.png'),
            "set title 'Naive vs tiled (flash) attention, one head, d=%d, M=%d floats'\nset xlabel 'T (tokens)'\n"
            "set ylabel 'bytes'\nset logscale xy\nset format y '10^{%%L}'\n"
            "plot 'nmem.dat' w lp pt 7 t 'naive: intermediate memory', 'fmem.dat' w lp pt 5 t 'flash: intermediate memory', "
            "'nio.dat' w lp pt 6 t 'naive: bytes moved (counted)', 'fio.dat' w lp pt 4 t 'flash: bytes moved (counted)', "
            "'nf.dat' w l dt 2 t 'naive: IO formula', 'ff.dat' w l dt 2 t 'flash: IO formula'\n" % (nv[0]['d'], fl[0]['M']), data, work)
    md.append('![flash vs naive](img/tier3-flash.png)\n')
    a, b = nv[-1], fl[-1]
    md.append('At T = %d the naive algorithm holds %.1f MB of scores and probabilities and moves %.1f MB through '
              'slow memory; the tiled one holds %.1f KB whatever T is and moves %.1f MB (%.1fx less). The IO '
              'analysis of the FlashAttention paper: Θ(Nd + N²) accesses for the standard algorithm, Θ(N²d²/M) for '
              'the tiled one with on-chip memory M; the counted bytes follow the formulas (dashed). On a CPU the '
              'caches play the part of SRAM; the paper reports up to 9x fewer HBM accesses and 7.6x faster attention '
              'on GPT-2 on a GPU. %s\n' % (
                  a['T'], a['intermediate_bytes'] / 1e6, a['bytes_moved'] / 1e6, b['intermediate_bytes'] / 1e3,
                  b['bytes_moved'] / 1e6, a['bytes_moved'] / max(b['bytes_moved'], 1),
                  'Here the tiled version is %.2fx the naive one\'s time at that T.' % (b['ms'] / a['ms'])))


def system_section(md, res, C, fp16, ppl_full):
    md.append('### Paged caches composed with formats and selection\n')
    pg = res['paged']
    md.append(table(['spec', 'KV bytes vs fp16', 'ppl', 'Δppl', 'KL', 'top-1'],
                    [['`%s`' % r['spec'], '%.3fx' % (r['bytes_per_token'] / fp16), '%.4f' % r['ppl'], pct(r['ppl'], ppl_full),
                      '%.2e' % r['kl'], '%.3f' % r['top1_agree']] for r in pg]) + '\n')
    p = res['prefix'][0]
    md.append('### Prefix sharing\n')
    md.append('%d requests of %d tokens sharing their first %d (a system prompt), one pool: hit rate %.3f, %d of %d '
              'prompt tokens reused, %.1f ms per request against %.1f ms through a full cache, logits equal to the '
              'full cache\'s within %.1e.\n' % (p['requests'], p['context'], p['shared'], p['hit_rate'], p['prefill_saved'],
                                                 p['prompt_tokens'], p['ms_per_request'], p['ms_per_request_full'],
                                                 p['max_abs_logit_diff']))
    md.append('### A slower tier with prefetch\n')
    md.append('Both tiers are RAM on this machine, so each (block, layer) moved costs an injected %g µs (one '
              'simulated link); the fast tier holds a budget of whole blocks.\n' % res['tier'][0]['transfer_us'])
    md.append(table(['fast blocks of', 'mode', 'hit rate', 'stall ms/token', 'MB moved/token', 'prefetch accuracy', 'tok/s', 'top-1 vs full'],
                    [['%d of %d' % (r['fast_blocks'], r['blocks']), r['prefetch'], '%.3f' % r['hit_rate'], '%.3f' % r['stall_ms_per_token'],
                      '%.3f' % r['mb_moved_per_token'], '%.3f' % r['prefetch_accuracy'], '%.0f' % r['decode_tokens_per_s'],
                      '%.3f' % r['top1_agree']] for r in res['tier']]) + '\n')
    md.append('### Reuse across requests\n')
    rows = []
    for r in res['reuse']:
        for cls, c in r['classes'].items():
            rows.append([r['reuse'], cls, '%d/%d' % (c['hits'], c['pairs']), '%.3f' % c['sim_mean'], '%.3f' % c['layer_tokens_skipped'],
                         '%.2f (%.2f)' % (c['ttft_ms'], c['ttft_full_ms']), '%.2e' % c['kl_gen'], '%.3f' % c['greedy_match']])
    md.append(table(['method', 'prompt pair', 'hits', 'similarity', 'compute skipped', 'TTFT ms (full)', 'KL', 'greedy match'], rows) + '\n')
    unrelated = [r['classes']['unrelated']['hits'] for r in res['reuse']]
    md.append('### What the numbers say\n')
    md.append('- Pages cost nothing in quality by themselves and compose: `%s` holds %.3fx of a full fp16 cache at %s.' % (
        pg[-1]['spec'], pg[-1]['bytes_per_token'] / fp16, pct(pg[-1]['ppl'], ppl_full)))
    md.append('- Prefix sharing turns shared prompt tokens into skipped prefill exactly (%.1fx faster per request here).' % (
        p['ms_per_request_full'] / p['ms_per_request']))
    t = res['tier']
    react = [r for r in t if r['prefetch'] == 'reactive']
    pred = [r for r in t if r['prefetch'] == 'predictive']
    md.append('- Predictive prefetch changes the stall from %s to %s ms/token at the two fast-tier budgets; the '
              'results stay identical to the resident cache (top-1 %s).' % (
                  ' / '.join('%.3f' % r['stall_ms_per_token'] for r in react), ' / '.join('%.3f' % r['stall_ms_per_token'] for r in pred),
                  ' / '.join('%.3f' % r['top1_agree'] for r in t)))
    md.append('- Unrelated prompts never reuse (hits: %s); identical ones skip nearly all prefill.\n' % ', '.join(str(u) for u in unrelated))


# ---- the steps ---------------------------------------------------------------------------------------------------

def tier1_specs(C):
    """Selection policies at budgets of 1/8, 1/4 and 1/2 of the context, and the per-layer (pyramid) variants."""
    out = []
    for b in (C // 8, C // 4, C // 2):
        h = b // 2
        out += [(b, 'window', 'window:%d' % b), (b, 'sink+window', 'sink:4,window:%d' % (b - 4)),
                (b, 'h2o', 'h2o:%d,%d' % (h, h)), (b, 'tova', 'tova:%d' % b), (b, 'snapkv', 'snapkv:%d,%d' % (h, h)),
                (b, 'l2norm', 'knorm:%d' % b), (b, 'h2o+pyramid', 'h2o:%d,%d+pyramid' % (h, h)),
                (b, 'tova+pyramid', 'tova:%d+pyramid' % b)]
    return out


def storage_specs(C):
    g, r = max(C // 8, 8), max(C // 4, 16)  # KIVI's group and residual scaled to the context (paper: 32, 128 at 4k+)
    return ['full+fp16', 'full+int8', 'full+int4', 'full+int2', 'full+int4+hadamard', 'full+int2+fpkeep:4,%d' % r,
            'full+kivi4:%d,%d' % (g, r), 'full+kivi2:%d,%d' % (g, r), 'full+lowrank:16', 'full+lowrank:8',
            'full+minicache:2', 'full+minicache:2,90']


def system_specs(C):
    b = C // 4
    return ['paged:16', 'paged:16+int8', 'paged:16+int4', 'window:%d+paged:16' % b, 'h2o:%d,%d+paged:16' % (b // 2, b // 2),
            'window:%d+paged:16+int4' % b]


def count_steps(sc):
    """Steps main() runs, for the progress lines."""
    n = 2 + 1 + 3 + 3 + 1 + 2 + 2  # recall model, full cache, quality and recall per budget, stream, storage, heat maps
    n += 2 * len(sc['attn']) + 3 * len(sc['convert'])  # tier 2: train + eval each; pool, uptrain, eval per conversion
    return n + 5  # tier 3: flash, paged, prefix, tier, reuse


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--quick', action='store_true', help='the 2-core CPU scale, about 20 minutes (default)')
    g.add_argument('--full', action='store_true', help='the GPU scale (longer training, larger contexts)')
    ap.add_argument('--fresh', action='store_true', help='delete earlier results and start over')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where build/train runs [cpu]')
    ap.add_argument('--out', default='report', help='output directory [report]')
    ap.add_argument('--bin', default='build', help='build directory with train, infer, bench [build]')
    ap.add_argument('--smoke', action='store_true', help=argparse.SUPPRESS)  # minutes-long pipeline check
    a = ap.parse_args()
    scale = 'full' if a.full else 'smoke' if a.smoke else 'quick'
    sc = SCALES[scale]
    out = os.path.join(ROOT, a.out)
    global BIN
    BIN = a.bin
    for prog in (BIN + '/train', BIN + '/infer', BIN + '/bench'):
        if not os.access(os.path.join(ROOT, prog), os.X_OK):
            sys.exit('report: %s is missing: build first (./configure.py && ninja)' % prog)
    if not shutil.which('gnuplot'):
        sys.exit('report: gnuplot is not installed (scripts/install-deps.sh installs gnuplot-nox)')
    if a.fresh:
        for d in ('raw', 'work', 'img'):
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    meta_path = os.path.join(out, 'raw', 'meta.json')
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta['scale'] != scale:
            sys.exit('report: %s holds a --%s run; give --fresh to start a --%s one' % (out, meta['scale'], scale))
    env = dict(os.environ, OMP_WAIT_POLICY='passive')
    R = Runner(out, count_steps(sc), env)
    with open(meta_path, 'w') as f:
        json.dump({'scale': scale, 'device': a.device}, f)
    dev = ['--device', a.device] if a.device != 'cpu' else []
    C = sc['context']
    print('report: --%s scale into %s/ (finished steps are kept; --fresh starts over)' % (scale, a.out), flush=True)

    # the validation split (last 10% of the corpus) as a file for the evaluations
    corpus = os.path.join(ROOT, 'data', 'tinyshakespeare.txt')
    val = os.path.join(R.work, 'val.txt')
    with open(corpus, 'rb') as f:
        text = f.read()
    with open(val, 'wb') as f:
        f.write(text[len(text) - len(text) // 10:])
    rel = lambda p: os.path.relpath(p, ROOT)
    res = {}

    # ---- tier 1: token level -------------------------------------------------------------------------------
    warm = R.train_step('recall-warmup', 'tier 1: recall warm-up (dense copies, context 64)',
                        sc['warmup'] + ['--seed', '1'] + dev)
    model = R.train_step('recall', 'tier 1: recall model (half recall, half text, context %d)' % C,
                         ['--init-from', rel(warm)] + sc['recall'] + ['--seed', '2'] + dev)
    infer = [BIN + '/infer', '--ckpt', rel(model)]
    q = lambda spec: infer + ['--eval', rel(val), '--kv', spec, '--context', str(C), '--streams', str(sc['streams']), '--json']
    rc = lambda spec: infer + ['--eval', 'recall', '--kv', spec, '--context', str(C), '--streams',
                               str(sc['recall_per_distance']), '--json']
    res['full'] = R.json_step('t1-full', 'tier 1: the full cache (quality, recall)', [q('full'), rc('full')])
    specs = tier1_specs(C)
    res['t1_quality'], res['t1_recall'] = [], []
    for b in sorted({s[0] for s in specs}):
        these = [s[2] for s in specs if s[0] == b]
        res['t1_quality'] += R.json_step('t1-quality-%d' % b, 'tier 1: quality, budget %d of %d' % (b, C), [q(s) for s in these])
        res['t1_recall'] += R.json_step('t1-recall-%d' % b, 'tier 1: recall, budget %d of %d' % (b, C), [rc(s) for s in these])
    L = sc['stream_factor'] * C
    res['stream'] = R.json_step('t1-stream', 'tier 1: streaming %d tokens past a cache of %d' % (L, C // 2), [
        infer + ['--eval', rel(val), '--kv', spec, '--context', str(L), '--prefill', str(C), '--streams', '1', '--json',
                 '--curve', '16'] for spec in ('window:%d' % (C // 2), 'sink:4,window:%d' % (C // 2 - 4))])
    res['storage'] = R.json_step('t1-storage', 'tier 1: storage formats, low rank, MiniCache', [q(s) for s in storage_specs(C)])
    res['storage_recall'] = R.json_step('t1-storage-recall', 'tier 1: recall through int8/int4/int2/KIVI',
                                        [rc(s) for s in storage_specs(C)[1:4] + storage_specs(C)[6:8]])
    heat = [os.path.join(out, 'img', 'attn-%s.png' % n) for n in ('layer0', 'layer1', 'layer2', 'layer3', 'summary')]  # baby: 4 layers
    R.file_step('heatmaps', 'tier 1: attention heat maps', infer + ['--eval', 'attention', '--out', rel(os.path.join(out, 'img')),
                '--context', str(C), '--data', rel(corpus)], heat)
    res['heat'] = R.json_step('t1-attention', 'tier 1: attention statistics (sinks, heavy hitters)',
                              [infer + ['--eval', 'attention', '--out', rel(R.work), '--context', str(C), '--data', rel(corpus), '--json']])

    # ---- tier 2: model level ---------------------------------------------------------------------------------
    res['attn'] = {}
    ck = {}
    for attn in sc['attn']:
        ck[attn] = R.train_step('attn-' + attn.replace(':', ''), 'tier 2: train %s from scratch' % attn,
                                sc['attn_preset'] + ['--attn', attn, '--seed', '3'] + dev)
    T2 = None
    for attn in sc['attn']:
        base = [BIN + '/infer', '--ckpt', rel(ck[attn]), '--eval', rel(val), '--kv', 'full', '--json']
        res['attn'][attn] = R.json_step('t2-eval-' + attn.replace(':', ''), 'tier 2: evaluate %s' % attn,
                                        [base + ['--streams', '16'], base + ['--context', '1024', '--prefill', '992', '--streams', '1']])
    mha = ck[sc['attn'][0]]
    res['convert'] = {}
    for G in sc['convert']:
        base = [BIN + '/infer', '--ckpt', rel(mha), '--kv-heads', str(G), '--eval', rel(val), '--kv', 'full', '--json', '--streams', '16']
        res['convert'][G] = {'pooled': R.json_step('t2-pool-%d' % G, 'tier 2: MHA mean-pooled to %d kv heads' % G, [base])}
        up = R.train_step('uptrain-%d' % G, 'tier 2: uptrain the pooled %d-head model (%d steps)' % (G, sc['uptrain_steps']),
                          ['--init-from', rel(mha), '--attn', 'mqa' if G == 1 else 'gqa:%d' % G, '--steps',
                           str(sc['uptrain_steps']), '--warmup', '5', '--lr', '5e-4', '--seed', '4'] + dev)
        res['convert'][G]['uptrained'] = R.json_step('t2-uptrained-%d' % G, 'tier 2: evaluate the uptrained %d-head model' % G, [
            [BIN + '/infer', '--ckpt', rel(up), '--eval', rel(val), '--kv', 'full', '--json', '--streams', '16']])

    # ---- tier 3: system level ------------------------------------------------------------------------------------
    res['flash'] = R.json_step('t3-flash', 'tier 3: naive vs flash attention on the CPU', [
        [BIN + '/bench', '--attention', '--attention-t', sc['bench_t'], '--json']])
    res['paged'] = R.json_step('t3-paged', 'tier 3: pages with formats and selection', [q(s) for s in system_specs(C)])
    res['prefix'] = R.json_step('t3-prefix', 'tier 3: prefix sharing (8 requests sharing 3/4 of the prompt)', [
        infer + ['--eval', 'prefix', '--kv', 'paged:16', '--context', str(C), '--prefill', str(3 * C // 4), '--data', rel(corpus), '--json']])
    tier = infer + ['--eval', 'tier', '--kv', 'paged:16', '--transfer-us', '10', '--context', str(C), '--data', rel(corpus), '--json']
    res['tier'] = R.json_step('t3-tier', 'tier 3: a slower tier, reactive vs predictive at 25% and 50%', [tier + ['--prefetch', 'resident']] + [
        tier + ['--fast', str(f), '--prefetch', m] for f in (max(2, C // 16 // 4), max(2, C // 16 // 2)) for m in ('reactive', 'predictive')])
    res['reuse'] = R.json_step('t3-reuse', 'tier 3: reuse across requests (lsh, semshare)', [
        infer + ['--eval', 'reuse', '--reuse', m, '--context', str(C), '--data', rel(corpus), '--json'] for m in ('lsh', 'semshare')])

    with open(os.path.join(out, 'commands.sh'), 'w') as f:
        f.write('#!/bin/sh\n# The commands `python3 scripts/report.py --%s` ran, in order (from the repository root).\n' % scale)
        f.write('# "# kept:" lines were finished in an earlier run of the same report and not run again.\n')
        f.write('\n'.join(R.commands) + '\n')
    write_report(out, sc, scale, res, R)
    print('report: wrote %s/REPORT.md (%.0f s)' % (a.out, time.time() - R.t0))


if __name__ == '__main__':
    main()
