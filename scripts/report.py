#!/usr/bin/env python3
"""Reproduces the course report on KV-cache management on models trained here, tier by tier: `ninja report`.

Every number in report/REPORT.md comes from this run: the script trains the models, runs the evaluations
through build/train, build/infer and build/bench, keeps the results the report cites as JSON lines under
report/raw/ (each evaluation step's output, and each training run's loss curve), writes the exact commands to
report/commands.sh, draws the plots and the labelled attention heat maps with gnuplot (pngcairo; the heat maps
through scripts/heatmaps.py), and writes the report (scripts/report_write.py and the report_*.py it imports). Everything else goes to report/work/ (not committed): models, the
per-step training logs, the validation text, each step's signature (what its results depend on) and meta.json
(the scale of the run).

  python3 scripts/report.py [--quick | --full] [--fresh] [--device cpu|cuda] [--out DIR]

--quick (the default, into report/) took 68 minutes of step time on a 2-core CPU (summed over the resumed runs
that made the committed report, its trainings partly under load; 18 of them the SmolLM2 tier, run only when
models/ holds its file). --full (into report/full/) is the larger scale: tier 1 at context 256 on two seeds,
tier 2 on the small preset's 16 heads, one seed each, no pretrained tier (see SCALES). Seeds are fixed, so a
rerun gives the same numbers up to timing noise. A run that stops (Ctrl-C, a crash) resumes where it stopped: finished steps are kept (an
evaluation counts as finished once its output file in report/raw/ is complete and its signature in report/work/
matches; a training run once report/work/NAME.ckpt.done exists), an interrupted training run continues from its
last checkpoint with build/train --resume. --fresh starts over.
"""
import argparse
import concurrent.futures
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

import report_pretrained
import report_ruler
import report_tier1
import report_tier2
from report_write import loss_curve, read_jsonl, system_specs, train_log, write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = 'build'  # --bin: the build directory whose programs run

# ---- scales --------------------------------------------------------------------------------------------------

SCALES = {
    'quick': dict(
        # tier 1: the recall recipe of BENCHMARKS.md ("Long-range recall"), shortened: a dense-copy warm-up at
        # context 64, then half recall, half text at context 128; three seeds
        warmup=['--preset', 'baby', '--mix', 'recall:1.0', '--steps', '4500'],  # the copy forms near step 2000
        recall=['--context', '128', '--batch', '12', '--mix', 'recall:0.5', '--steps', '1500'],
        context=128, streams=64, recall_per_distance=100, stream_factor=16, stream_streams=32, seeds=3,
        latency_context=8192, sink_cache=32, sink_stream=1024, ruler_items=100, gen_prompts=64, serve_clients='1,8,32',
        # tier 2: the baby shape with 8 heads of 16 (MHA, GQA with 4 and 2 groups, MQA), equal steps
        attn_preset=['--preset', 'baby', '--heads', '8', '--steps', '1500'], attn=['mha', 'gqa:4', 'gqa:2', 'mqa'],
        t2_seed_attn=['mha', 'gqa:4', 'gqa:2', 'mqa'], t2_seeds=[3, 5, 7],
        convert=[4, 2, 1], uptrain_steps=75, uptrain_G=2,  # 75: 5% of the pretraining steps (the GQA paper's alpha)
        uptrain_seeds=[3, 5, 7],  # the uptraining experiment on each MHA seed
        decode_batch=[], frag=[],  # build/bench's defaults
        bench_t='128,256,512,1024,2048,4096', flash_m=[256, 1024, 4096, 16384, 65536, 262144],
        pretrained=dict(sink_cache=64, sink_stream=768, streams=8, context=256, ruler_context=192, ruler_items=100),
    ),
    'smoke': dict(  # checks the pipeline in a few minutes; its numbers mean nothing
        warmup=['--preset', 'baby', '--steps', '60'], recall=['--context', '128', '--batch', '4', '--mix', 'recall:0.5', '--steps', '20'],
        context=128, streams=4, recall_per_distance=2, stream_factor=4, stream_streams=2, seeds=2,
        latency_context=256, sink_cache=16, sink_stream=128, ruler_items=5, gen_prompts=4, serve_clients='1,2',
        attn_preset=['--preset', 'baby', '--steps', '40'], attn=['mha', 'gqa:2', 'mqa'], t2_seed_attn=['mha', 'mqa'], t2_seeds=[3, 5],
        convert=[2, 1], uptrain_steps=4, uptrain_G=2, uptrain_seeds=[3, 5],
        decode_batch=['--decode-batches', '1,2', '--decode-contexts', '64', '--decode-runs', '1'],
        frag=['--frag-requests', '32', '--frag-budget-mb', '4'],
        bench_t='64,128,256', flash_m=[256, 4096], pretrained=None,
    ),
    'full': dict(
        # the larger scale, sized for about 1.5 hours on 2 CPU cores: tier 1 at context 256 (the recall recipe of
        # BENCHMARKS.md in full; its warm-ups are quick's) on two seeds (the first, 1/2, grows no copy at quick:
        # the tier runs on the one that recalls), tier 2 on the small preset (16 heads of 8) on one seed (the
        # spreads over seeds are the quick report's: three seeds of these recipes would take 2 more hours
        # here); the evaluations as large as the issue asks (64 streams, 100 items per cell), the latency context
        # as quick's; no pretrained tier (it does not depend on the trained models; quick has it)
        warmup=['--preset', 'baby', '--mix', 'recall:1.0', '--steps', '4500'],
        recall=['--context', '256', '--batch', '16', '--mix', 'recall:0.5', '--steps', '2500'],
        context=256, streams=64, recall_per_distance=100, stream_factor=16, stream_streams=32, seeds=2,
        latency_context=8192, sink_cache=64, sink_stream=2048, ruler_items=100, gen_prompts=64, serve_clients='1,8,32',
        attn_preset=['--preset', 'small', '--steps', '1200'], attn=['mha', 'gqa:4', 'mqa'],
        t2_seed_attn=[], t2_seeds=[3], convert=[8, 4, 1], uptrain_steps=60, uptrain_G=4, uptrain_seeds=[3],
        decode_batch=[], frag=[], bench_t='128,256,512,1024,2048,4096,8192', flash_m=[256, 1024, 4096, 16384, 65536, 262144],
        pretrained=None,
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

    def _log(self, cmd, appends_to=None, kept=False):
        """Records cmd for commands.sh as a shell line (evaluations single-threaded, see _run)."""
        line = ('' if cmd[0].endswith('/train') else 'OMP_NUM_THREADS=1 ') + ' '.join(shlex.quote(c) for c in cmd)
        if appends_to:
            line += ' >> ' + shlex.quote(os.path.relpath(appends_to, ROOT))
        self.commands.append(line + ('  # kept from an earlier run' if kept else ''))

    def _run(self, cmd, stdout=None, ok_if=None, show=False, log_as=None, log=True):
        """Runs cmd from the repository root: its stdout to the file stdout (or nowhere), or with show, every line
        it prints echoed as it comes (training's validation lines: progress within a long step). A failure stops
        the report with the command and its last words, unless they contain ok_if."""
        # evaluations run single-threaded: on these small models OpenMP's fork/join costs more than it gives
        # (BENCHMARKS.md measures the same way); training uses every core
        train = cmd[0].endswith('/train')
        env = self.env if train else dict(self.env, OMP_NUM_THREADS='1')
        if log:
            self._log(cmd, log_as)
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

    def json_step(self, name, what, cmds, jobs=1):
        """Runs each command (its stdout: JSON lines) and keeps their output together as raw/NAME.jsonl, in the
        order of cmds; the signature of what produced it goes to work/NAME.sig. jobs > 1 runs that many at once
        (single-threaded evaluations whose timings the report does not compare)."""
        path = os.path.join(self.raw, name + '.jsonl')
        sig_path = os.path.join(self.work, name + '.sig')
        sig = self._signature(cmds)
        old = open(sig_path).read().strip() if os.path.exists(sig_path) else None
        if os.path.exists(path) and old == sig:
            self._progress(what, 'kept')
            for cmd in cmds:
                self._log(cmd, path, kept=True)
            return read_jsonl(path)
        t = time.time()
        tmp = path + '.part'
        parts = ['%s.%d' % (tmp, i) for i in range(len(cmds))]
        if jobs > 1:
            for cmd in cmds:  # commands.sh lists them in order
                self._log(cmd, path)
            with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
                list(pool.map(lambda i: self._run(cmds[i], parts[i], log=False), range(len(cmds))))
        else:
            for cmd, part in zip(cmds, parts):
                self._run(cmd, part, log_as=path)
        with open(tmp, 'w') as out:
            for part in parts:
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

    def _write_curve(self, log, curve):
        """raw/train-NAME.jsonl: the loss curve (report_write.loss_curve) of the per-step log work/train-NAME.jsonl,
        its lines as build/train wrote them."""
        keep = {r['step'] for r in loss_curve(train_log(log))}
        last = {}  # step -> its last line (a resumed run logs its steps again)
        with open(log) as f:
            for line in f:
                if line.strip():
                    last[json.loads(line)['step']] = line if line.endswith('\n') else line + '\n'
        with open(curve + '.part', 'w') as f:
            f.writelines(last[s] for s in sorted(keep))
        os.replace(curve + '.part', curve)

    def train_step(self, name, what, args):
        """build/train to work/NAME.ckpt with its per-step JSON-lines log in work/train-NAME.jsonl and the loss curve
        the report plots in raw/train-NAME.jsonl; resumes an interrupted run."""
        ckpt = os.path.join(self.work, name + '.ckpt')
        log = os.path.join(self.work, 'train-' + name + '.jsonl')
        curve = os.path.join(self.raw, 'train-' + name + '.jsonl')
        done, given = ckpt + '.done', ckpt + '.args'
        want = '\0'.join(args)
        if (open(given).read() if os.path.exists(given) else None) != want:  # new, or its settings changed
            for f in (ckpt, done, log, curve):
                if os.path.exists(f):
                    os.remove(f)
            with open(given, 'w') as f:
                f.write(want)
        if os.path.exists(done) and not os.path.exists(curve):  # the curve was deleted: rebuild it, or retrain
            if os.path.exists(log):
                self._write_curve(log, curve)
            else:
                for f in (ckpt, done):
                    if os.path.exists(f):
                        os.remove(f)
        if os.path.exists(done):
            self._progress(what, 'kept')
            self._log([BIN + '/train'] + args + ['--out', os.path.relpath(ckpt, ROOT), '--log', os.path.relpath(log, ROOT)],
                      kept=True)
            return ckpt
        t = time.time()
        rc, rl = os.path.relpath(ckpt, ROOT), os.path.relpath(log, ROOT)  # commands run from the root
        if os.path.exists(ckpt):  # an earlier run stopped after a checkpoint: continue it exactly
            cmd = [BIN + '/train', '--resume', rc, '--out', rc, '--log', rl] + data_args(args)
        else:
            cmd = [BIN + '/train'] + args + ['--out', rc, '--log', rl]
        # its progress shows (a live line on a terminal, validation lines otherwise); a run stopped after its
        # last checkpoint but before .done: train says so, and the run is complete
        print('             training: %s' % what, flush=True)
        self._run(cmd, ok_if='the checkpoint is already at step', show=True)
        self._write_curve(log, curve)
        open(done, 'w').close()
        self._progress('%s (%.1f s)' % (what, time.time() - t), 'done')
        return ckpt

    def file_step(self, name, what, cmds, outputs):
        """Commands (in order) whose outputs are files (images); done when they all exist."""
        if all(os.path.exists(o) for o in outputs):
            self._progress(what, 'kept')
            return
        t = time.time()
        for cmd in cmds:
            self._run(cmd)
        self._progress('%s (%.1f s)' % (what, time.time() - t), 'done')


def heat_maps(R, infer, what, name, img_dir, T, corpus, layers, prefix='attn'):
    """The attention matrices of one window (build/infer attention --matrix-out) drawn as labelled heat maps
    (scripts/heatmaps.py): img_dir/PREFIX-layer{L}.png and PREFIX-summary.png."""
    mat = os.path.join(R.work, name)
    os.makedirs(mat, exist_ok=True)
    rel = lambda p: os.path.relpath(p, ROOT)
    outs = [os.path.join(img_dir, '%s-%s.png' % (prefix, n)) for n in ['layer%d' % l for l in range(layers)] + ['summary']]
    R.file_step(name, what, [infer[:1] + ['attention'] + infer[1:] + ['--matrix-out', rel(mat), '--context', str(T), '--data', corpus],
                             ['python3', 'scripts/heatmaps.py', rel(mat), rel(img_dir)] + (['--prefix', prefix] if prefix != 'attn' else [])],
                outs)


def data_args(args):
    """The flags a resumed run still needs (the checkpoint fixes the rest): --data and --device."""
    keep = ('--data', '--device')
    return [a for i, a in enumerate(args) if a in keep or (i > 0 and args[i - 1] in keep)]


# ---- the steps ---------------------------------------------------------------------------------------------------

def count_steps(sc):
    """Steps main() runs, for the progress lines."""
    seeds = sc['seeds']
    n = 2 * seeds + 9 + 2 * (seeds - 1) + 2  # tier 1 (report_tier1.run), heat maps and attention statistics
    n += 2 * len(sc['attn']) + 2 * len(sc['t2_seed_attn']) * (len(sc['t2_seeds']) - 1) + 3 * len(sc['convert'])
    n += len(sc['uptrain_seeds']) * (2 * (1 + len(report_tier2.FRACTIONS)) + 2) + 1  # the uptraining experiment, batched decode
    n += 6 + 3 * (len(sc['t2_seeds']) - 1) + 1 + len(report_ruler.KEEP)  # the sink control (heat maps, seeds), retrieval
    n += 8  # tier 3: flash, flash against M, fragmentation, serving, paged, prefix, tier, reuse
    if sc['pretrained'] and os.path.exists(os.path.join(ROOT, report_pretrained.MODEL)):
        n += 4
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument('--quick', action='store_true', help='the 2-core CPU scale, about an hour with the SmolLM2 tier (default)')
    g.add_argument('--full', action='store_true', help='the larger scale: tier 1 at context 256, tier 2 on 16 heads (into report/full)')
    ap.add_argument('--fresh', action='store_true', help='delete earlier results and start over')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'], help='where build/train runs [cpu]')
    ap.add_argument('--out', default=None, help='output directory [report, or report/full with --full]')
    ap.add_argument('--bin', default='build', help='build directory with train, infer, bench [build]')
    ap.add_argument('--smoke', action='store_true', help=argparse.SUPPRESS)  # minutes-long pipeline check
    a = ap.parse_args()
    scale = 'full' if a.full else 'smoke' if a.smoke else 'quick'
    a.out = a.out or ('report/full' if a.full else 'report')
    sc = SCALES[scale]
    out = os.path.join(ROOT, a.out)
    global BIN
    BIN = a.bin
    for prog in (BIN + '/train', BIN + '/infer', BIN + '/bench', BIN + '/serve'):
        if not os.access(os.path.join(ROOT, prog), os.X_OK):
            sys.exit('report: %s is missing: build first (./configure.py && ninja)' % prog)
    if not shutil.which('gnuplot'):
        sys.exit('report: gnuplot is not installed (scripts/install-deps.sh installs gnuplot-nox)')
    if a.fresh:
        for d in ('raw', 'work', 'img'):
            shutil.rmtree(os.path.join(out, d), ignore_errors=True)
    meta_path = os.path.join(out, 'work', 'meta.json')
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
    report_tier1.run(R, sc, BIN, rel, val, corpus, dev, [], res)
    model = res['t1_models'][0]
    infer = [BIN + '/infer', '--ckpt', rel(model)]
    q = lambda spec: infer + ['--eval', rel(val), '--kv', spec, '--context', str(C), '--streams', str(sc['streams']), '--json']
    heat_maps(R, infer, 'tier 1: labelled attention heat maps (recall model)', 'attn-recall', os.path.join(out, 'img'), C,
              rel(corpus), 4)  # baby: 4 layers
    res['heat'] = R.json_step('t1-attention', 'tier 1: attention statistics (sinks, heavy hitters)',
                              [infer + ['--eval', 'attention', '--out', rel(R.work), '--context', str(C), '--data', rel(corpus), '--json']])

    # ---- tier 2: model level ---------------------------------------------------------------------------------
    report_tier2.run(R, sc, BIN, rel, val, dev, res)
    ck = res['t2_models']

    # ---- the positive sink control: tier 2's MHA recipe with a start symbol at position 0 ------------------
    bos = R.train_step('sink-bos', 'sink control: the MHA recipe with a start symbol (--bos)',
                       sc['attn_preset'] + ['--attn', 'mha', '--bos', '--seed', '3'] + dev)
    res['sink_controls'] = {}
    BC = sc['sink_cache']
    os.makedirs(os.path.join(out, 'img', 'bos'), exist_ok=True)
    heat_maps(R, [BIN + '/infer', '--ckpt', rel(bos)], 'sink control: labelled heat maps of the --bos model', 'attn-bos',
              os.path.join(out, 'img', 'bos'), 2 * BC, rel(corpus), 4)
    # the --bos recipe on the other tier-2 seeds too: whether a sink grows is a property of a training run
    more = [('bos-s%d' % sd, R.train_step('sink-bos-s%d' % sd, 'sink control: the --bos recipe, seed %d' % sd,
                                          sc['attn_preset'] + ['--attn', 'mha', '--bos', '--seed', str(sd)] + dev))
            for sd in sc['t2_seeds'][1:]]
    for tag, m in [('bos', bos), ('nobos', ck['mha'])] + more:
        base = [BIN + '/infer', '--ckpt', rel(m)]
        res['sink_controls'][tag] = dict(
            stream=R.json_step('sink-%s-stream' % tag, 'sink control (%s): streaming %d tokens past a cache of %d' % (
                tag, sc['sink_stream'], BC), [base + ['--eval', rel(val), '--kv', spec, '--context', str(sc['sink_stream']),
                                                      '--prefill', str(BC), '--streams', str(sc['stream_streams']), '--json',
                                                      '--curve', '16']
                                              for spec in ('window:%d' % BC, 'sink:4,window:%d' % (BC - 4))], jobs=2),
            attn=R.json_step('sink-%s-attention' % tag, 'sink control (%s): attention statistics' % tag, [
                base + ['--eval', 'attention', '--out', rel(R.work), '--context', str(2 * BC), '--data', rel(corpus), '--json']]))

    # ---- retrieval: a RULER-like suite over compression ratios ----------------------------------------------
    report_ruler.run(R, sc, BIN, rel, model, res)

    # ---- tier 3: system level ------------------------------------------------------------------------------------
    res['flash'] = R.json_step('t3-flash', 'tier 3: naive vs flash attention on the CPU', [
        [BIN + '/bench', '--attention', '--attention-t', sc['bench_t'], '--json']])
    res['flash_m'] = R.json_step('t3-flash-m', 'tier 3: flash traffic against its on-chip size M (T = %s)' % sc['bench_t'].split(',')[-2], [
        [BIN + '/bench', '--attention', '--attention-t', sc['bench_t'].split(',')[-2], '--attention-m', str(M), '--attention-runs', '1',
         '--json'] for M in sc['flash_m']], jobs=2)
    res['frag'] = R.json_step('t3-fragmentation', 'tier 3: paged pool vs contiguous reservation (build/bench --fragmentation)', [
        [BIN + '/bench', '--fragmentation', '--json'] + sc['frag']])
    res['serving'] = R.json_step('t3-serving', 'tier 3: build/serve throughput and latency per KV format and client count (serial)', [
        ['python3', 'scripts/serve_bench.py', '--ckpt', rel(model), '--bin', BIN, '--kv-format', f, '--clients', sc['serve_clients'],
         '--requests', '4', '--max-tokens', str(C // 2)] for f in ('fp32', 'fp16', 'int8', 'int4')])
    res['paged'] = R.json_step('t3-paged', 'tier 3: pages with formats and selection', [q(s) for s in system_specs(C)])
    res['prefix'] = R.json_step('t3-prefix', 'tier 3: prefix sharing (8 requests sharing 3/4 of the prompt)', [
        infer + ['--eval', 'prefix', '--kv', 'paged:16', '--context', str(C), '--prefill', str(3 * C // 4), '--data', rel(corpus), '--json']])
    tier = infer + ['--eval', 'tier', '--kv', 'paged:16', '--transfer-us', '10', '--context', str(C), '--data', rel(corpus), '--json']
    # a slow link (10 µs per block and layer moved), where overlapping transfers with compute can pay, and a free one
    # (0 µs), where there is nothing to hide and the predictor can only cost (its thread, its wrong guesses)
    free = [a if a != '10' else '0' for a in tier]
    res['tier'] = R.json_step('t3-tier', 'tier 3: a slower tier, reactive vs predictive at 25% and 50%, slow and free link', [
        tier + ['--prefetch', 'resident']] + [
        t_ + ['--fast', str(f), '--prefetch', m] for t_ in (tier, free) for f in (max(2, C // 16 // 4), max(2, C // 16 // 2))
        for m in ('reactive', 'predictive')], jobs=1)
    res['reuse'] = R.json_step('t3-reuse', 'tier 3: reuse across requests (lsh, semshare)', [
        infer + ['--eval', 'reuse', '--reuse', m, '--context', str(C), '--data', rel(corpus), '--json'] for m in ('lsh', 'semshare')])

    # ---- the pretrained tier: SmolLM2-135M when its file is here -----------------------------------------------
    if sc['pretrained']:
        report_pretrained.run(R, sc, BIN, rel, ROOT, val, res)
    else:
        res['pretrained'] = None

    with open(os.path.join(out, 'commands.sh'), 'w') as f:
        f.write('#!/bin/sh\n# The commands `python3 scripts/report.py --%s` ran, in order (from the repository root).\n' % scale)
        f.write('# Lines marked "kept" were finished by an earlier run of the same report and not run again.\n')
        f.write('\n'.join(R.commands) + '\n')
    write_report(out, sc, scale, res, R)
    print('report: wrote %s/REPORT.md (%.0f s)' % (a.out, time.time() - R.t0))


if __name__ == '__main__':
    main()
