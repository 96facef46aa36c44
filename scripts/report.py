#!/usr/bin/env python3
"""Reproduces the course report on KV-cache management on models trained here, tier by tier: `ninja report`.

Every number in report/REPORT.md comes from this run: the script trains the models, runs the evaluations
through build/train, build/infer and build/bench, keeps the results the report cites as JSON lines under
report/raw/ (each evaluation step's output, and each training run's loss curve), writes the exact commands to
report/commands.sh, draws the plots with gnuplot (pngcairo) and the attention heat maps with build/infer
(stb_image_write), and writes the report. Everything else goes to report/work/ (not committed): models, the
per-step training logs, the validation text, each step's signature (what its results depend on) and meta.json
(the scale of the run).

  python3 scripts/report.py [--quick | --full] [--fresh] [--device cpu|cuda] [--out DIR]

--quick (the default) takes about 11 minutes on a 2-core CPU (10 min 42 s measured from scratch); --full is the GPU scale (longer training,
the trained contexts of BENCHMARKS.md, more heads; 28 min on the same CPU). Seeds are fixed, so a rerun gives the same numbers up to
timing noise. A run that stops (Ctrl-C, a crash) resumes where it stopped: finished steps are kept (an
evaluation counts as finished once its output file in report/raw/ is complete and its signature in report/work/
matches; a training run once report/work/NAME.ckpt.done exists), an interrupted training run continues from its
last checkpoint with build/train --resume. --fresh starts over.
"""
import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from report_write import loss_curve, read_jsonl, storage_specs, system_specs, tier1_specs, train_log, write_report

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

    def _log(self, cmd, appends_to=None, kept=False):
        """Records cmd for commands.sh as a shell line (evaluations single-threaded, see _run)."""
        line = ('' if cmd[0].endswith('/train') else 'OMP_NUM_THREADS=1 ') + ' '.join(shlex.quote(c) for c in cmd)
        if appends_to:
            line += ' >> ' + shlex.quote(os.path.relpath(appends_to, ROOT))
        self.commands.append(line + ('  # kept from an earlier run' if kept else ''))

    def _run(self, cmd, stdout=None, ok_if=None, show=False, log_as=None):
        """Runs cmd from the repository root: its stdout to the file stdout (or nowhere), or with show, every line
        it prints echoed as it comes (training's validation lines: progress within a long step). A failure stops
        the report with the command and its last words, unless they contain ok_if."""
        # evaluations run single-threaded: on these small models OpenMP's fork/join costs more than it gives
        # (BENCHMARKS.md measures the same way); training uses every core
        train = cmd[0].endswith('/train')
        env = self.env if train else dict(self.env, OMP_NUM_THREADS='1')
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

    def json_step(self, name, what, cmds):
        """Runs each command (its stdout: JSON lines) and keeps their output together as raw/NAME.jsonl; the
        signature of what produced it goes to work/NAME.sig."""
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
        with open(tmp, 'w') as out:
            for cmd in cmds:
                part = tmp + '.1'
                self._run(cmd, part, log_as=path)
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


# ---- the steps ---------------------------------------------------------------------------------------------------

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
        f.write('# Lines marked "kept" were finished by an earlier run of the same report and not run again.\n')
        f.write('\n'.join(R.commands) + '\n')
    write_report(out, sc, scale, res, R)
    print('report: wrote %s/REPORT.md (%.0f s)' % (a.out, time.time() - R.t0))


if __name__ == '__main__':
    main()
