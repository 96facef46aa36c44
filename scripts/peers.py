#!/usr/bin/env python3
"""kvlab against its peers, llm.c (training) and llama2.c (decode), interleaved on one machine (issue 13).

The peers are public repositories that you clone yourself into a scratch folder outside this repository;
nothing of theirs is vendored here. This script builds them there, writes the files they need at kvlab's
shapes (a llama2.c export of a kvlab checkpoint, an llm.c GPT-2 checkpoint and token files), and runs both
sides in alternation so slow drift of the machine hits both equally.

  git clone https://github.com/karpathy/llama2.c DIR/llama2.c
  git clone https://github.com/karpathy/llm.c DIR/llm.c
  scripts/peers.py build  --peers DIR                 # compiles the peers in DIR (a patched copy, see below)
  scripts/peers.py decode --peers DIR [--rounds 7]    # kvlab generate vs llama2.c runfast/runomp, 1 and 2 threads
  scripts/peers.py train  --peers DIR [--rounds 5]    # kvlab train (baby) vs llm.c train_gpt2.c, 2 threads
  add --busy to run every measurement with a competing busy process pinned to CPU 1

Patches applied to the scratch copies only, and why:
  llama2.c run.c: the loop's `if (next == 1) break;` is removed, so every run decodes exactly --steps tokens
                  (our export's token 1 is an ordinary character, not BOS).
  llm.c train_gpt2.c: batch and sequence length set to kvlab's baby preset (12 x 64), the periodic text
                  generation removed (it is not training), steps set by --steps.
Decode: dim 128, hidden 352, 4 layers, 4 heads, vocabulary 65, 256 positions, greedy, both sides generate
255 tokens after one prompt token; tokens/s is each program's own figure (llama2.c: "achieved tok/s";
kvlab: the decode tokens/s of its closing line). Training: the median of each run's per-step times after the
first 3 steps (llm.c prints "took X ms"; kvlab writes tokens_per_s per step to --log).
"""
import argparse
import array
import json
import os
import random
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, 'build')


def die(msg):
    print('peers: ' + msg, file=sys.stderr)
    sys.exit(1)


def run(cmd, env=None, cwd=None, busy=False):
    """Runs cmd, returns (stdout, stderr); a failure is fatal and names the command."""
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        die('%s failed (exit %d): %s' % (' '.join(cmd), p.returncode, (p.stderr or p.stdout).strip()[-400:]))
    return p.stdout, p.stderr


def git_head(path):
    try:
        return subprocess.run(['git', '-C', path, 'rev-parse', 'HEAD'], stdout=subprocess.PIPE, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return 'unknown'


def cpu_model():
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return 'unknown'


def blas_line():
    out, _ = run([os.path.join(BUILD, 'bench'), '--blas'])
    return ' '.join(out.split())


# --- build ------------------------------------------------------------------------------------------------


def build(peers):
    l2, lc = os.path.join(peers, 'llama2.c'), os.path.join(peers, 'llm.c')
    for d in (l2, lc):
        if not os.path.isdir(d):
            die('%s is missing: clone the peer there first (see --help)' % d)
    src = open(os.path.join(l2, 'run.c')).read()
    patched, n = re.subn(r'\n\s*if \(next == 1\) \{ break; \}', '\n', src)
    if n != 1:
        die('llama2.c run.c: the BOS break was not found once (found %d): a newer run.c?' % n)
    with open(os.path.join(l2, 'run_peers.c'), 'w') as f:
        f.write(patched)
    run(['gcc', '-Ofast', '-march=native', '-o', 'runfast', 'run_peers.c', '-lm'], cwd=l2)
    run(['gcc', '-Ofast', '-march=native', '-fopenmp', '-o', 'runomp', 'run_peers.c', '-lm'], cwd=l2)
    src = open(os.path.join(lc, 'train_gpt2.c')).read()
    subs = [(r'int B = 4;', 'int B = 12;'), (r'int T = 64;', 'int T = 64;'),
            (r'step > 0 && step % 20 == 0', '0'),
            (r'for \(int step = 0; step <= 40; step\+\+\)', 'for (int step = 0; step <= PEERS_STEPS; step++)')]
    for pat, rep in subs:
        src, n = re.subn(pat, rep, src)
        if n != 1:
            die('llm.c train_gpt2.c: pattern %r found %d times, expected once: a newer train_gpt2.c?' % (pat, n))
    with open(os.path.join(lc, 'train_gpt2_peers.c'), 'w') as f:
        f.write(src)
    run(['gcc', '-Ofast', '-march=native', '-fopenmp', '-DOMP', '-DPEERS_STEPS=40', '-o', 'train_gpt2_peers',
         'train_gpt2_peers.c', '-lm'], cwd=lc)
    print('built in %s: llama2.c %s (runfast, runomp), llm.c %s (train_gpt2_peers)' %
          (peers, git_head(l2), git_head(lc)))


# --- decode: a kvlab checkpoint in llama2.c's format -----------------------------------------------------------


def read_kvlab_ckpt(path):
    """The config, vocabulary bytes and weights (array of float) of a kvlab checkpoint (checkpoint.h)."""
    with open(path, 'rb') as f:
        data = f.read()
    if data[:8] != b'KVLABCKP':
        die('%s is not a kvlab checkpoint' % path)
    V, L, NH, NKV, C, H, T = struct.unpack_from('<7i', data, 20)
    n_params, = struct.unpack_from('<Q', data, 60)
    hdr, = struct.unpack_from('<I', data, 12)
    tv, = struct.unpack_from('<I', data, hdr)
    vocab = data[hdr + 4:hdr + 4 + tv]
    w = array.array('f')
    w.frombytes(data[hdr + 4 + tv:hdr + 4 + tv + 4 * n_params])
    if sys.byteorder != 'little':
        w.byteswap()
    return dict(V=V, L=L, NH=NH, NKV=NKV, C=C, H=H, T=T), vocab, w


def export_llama2c(ckpt, out_model, out_tok):
    cfg, vocab, w = read_kvlab_ckpt(ckpt)
    V, L, NH, NKV, C, H, T = (cfg[k] for k in ('V', 'L', 'NH', 'NKV', 'C', 'H', 'T'))
    KVC = C // NH * NKV
    sizes = [('wte', V * C), ('attn_norm', L * C), ('wq', L * C * C), ('wk', L * KVC * C), ('wv', L * KVC * C),
             ('wo', L * C * C), ('mlp_norm', L * C), ('w1', L * H * C), ('w3', L * H * C), ('w2', L * C * H),
             ('final_norm', C)]
    if sum(n for _, n in sizes) != len(w):
        die('%s: %d weights, expected %d for its config' % (ckpt, len(w), sum(n for _, n in sizes)))
    t, off = {}, 0
    for name, n in sizes:
        t[name] = w[off:off + n]
        off += n
    with open(out_model, 'wb') as f:
        f.write(struct.pack('<7i', C, H, L, NH, NKV, V, T))  # vocab > 0: classifier tied to the embedding
        for name in ('wte', 'attn_norm', 'wq', 'wk', 'wv', 'wo', 'mlp_norm', 'w1', 'w2', 'w3', 'final_norm'):
            t[name].tofile(f)
        array.array('f', bytes(4 * T * (C // NH))).tofile(f)  # freq_cis_real and _imag: unused by run.c
    with open(out_tok, 'wb') as f:
        f.write(struct.pack('<i', 6))
        for b in vocab:  # byte pieces: run.c prints them verbatim (a literal ' ' piece is dropped after token 1)
            f.write(struct.pack('<fi', 0.0, 6) + b'<0x%02X>' % b)
    return cfg


def need_clone(path):
    if not os.path.isdir(path):
        die('%s is missing: clone the peer there first, then run `scripts/peers.py build` (see --help)' % path)


def decode(args):
    l2 = os.path.join(args.peers, 'llama2.c')
    need_clone(l2)
    for exe in ('runfast', 'runomp'):
        if not os.access(os.path.join(l2, exe), os.X_OK):
            die('%s/%s is missing: run `scripts/peers.py build --peers %s` first' % (l2, exe, args.peers))
    work = tempfile.mkdtemp(prefix='kvlab-peers-')
    ckpt = os.path.join(work, 'decode.ckpt')
    # the shape of the issue: baby widths at 256 positions, trained a little so greedy text is not one letter
    run([os.path.join(BUILD, 'train'), '--preset', 'baby', '--context', '256', '--steps', '150', '--eval-windows',
         '1', '--eval-interval', '1000', '--out', ckpt, '--quiet'])
    model, tok = os.path.join(work, 'model.bin'), os.path.join(work, 'tok.bin')
    cfg = export_llama2c(ckpt, model, tok)
    steps = cfg['T']
    sides = {
        'kvlab 1 thread': ([os.path.join(BUILD, 'infer'), 'generate', '--ckpt', ckpt, '--prompt', 'A', '-n',
                            str(steps - 1), '--temperature', '0'], {'OMP_NUM_THREADS': '1'}),
        'kvlab 2 threads': ([os.path.join(BUILD, 'infer'), 'generate', '--ckpt', ckpt, '--prompt', 'A', '-n',
                             str(steps - 1), '--temperature', '0'], {'OMP_NUM_THREADS': '2'}),
        'llama2.c runfast': ([os.path.join(l2, 'runfast'), model, '-z', tok, '-n', str(steps), '-t', '0'], {}),
        'llama2.c runomp 2 threads': ([os.path.join(l2, 'runomp'), model, '-z', tok, '-n', str(steps), '-t', '0'],
                                      {'OMP_NUM_THREADS': '2'}),
    }
    agree = text_agreement(ckpt, model, tok, steps, l2)
    parse = {'kvlab': re.compile(r'decode ([0-9.]+) tokens/s'), 'llama2.c': re.compile(r'achieved tok/s: ([0-9.]+)')}
    res = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, (cmd, env) in sides.items():
            out, err = run(cmd, env=env)
            m = parse[name.split()[0]].search(err + out)
            if not m:
                die('%s: no tokens/s in its output' % name)
            res[name].append(float(m.group(1)))
        print('round %d/%d: %s' % (r + 1, args.rounds, ', '.join('%s %.0f' % (k, v[-1]) for k, v in res.items())),
              file=sys.stderr)
    shutil.rmtree(work)
    print('# greedy text: kvlab and llama2.c agree on the first %d of %d generated tokens' % agree)
    report('decode, tokens/s (dim %d, hidden %d, %d layers, %d heads, vocab %d, %d positions)' %
           (cfg['C'], cfg['H'], cfg['L'], cfg['NH'], cfg['V'], steps), res, args,
           [('kvlab 2 threads', 'llama2.c runomp 2 threads'), ('kvlab 1 thread', 'llama2.c runfast'),
            ('kvlab 2 threads', 'kvlab 1 thread')])


def text_agreement(ckpt, model, tok, steps, l2):
    """Both sides greedy from token 1 (llama2.c always starts there): how many generated characters agree.
    An independent check of the export and of kvlab's forward pass (float rounding may split a near tie)."""
    cfg, vocab, _ = read_kvlab_ckpt(ckpt)
    first = chr(vocab[1])
    out, _ = run([os.path.join(BUILD, 'infer'), 'generate', '--ckpt', ckpt, '--prompt', first, '-n',
                  str(steps - 1), '--temperature', '0'])
    ours = out[len(first):].rstrip('\n')
    theirs, _ = run([os.path.join(l2, 'runfast'), model, '-z', tok, '-n', str(steps), '-t', '0'])
    theirs = theirs.rstrip('\n')
    n = 0
    while n < min(len(ours), len(theirs)) and ours[n] == theirs[n]:
        n += 1
    return n, steps - 1


# --- train: llm.c at kvlab's baby shape ------------------------------------------------------------------------


def write_llmc_files(lc, text_path):
    """gpt2_124M.bin (GPT-2 at baby shape: 4 layers, 4 heads, width 128, 64 positions, byte vocabulary of the
    corpus) and the tinyshakespeare token files where train_gpt2.c looks for them."""
    with open(text_path, 'rb') as f:
        text = f.read()
    chars = sorted(set(text))
    idx = {c: i for i, c in enumerate(chars)}
    toks = array.array('H', (idx[c] for c in text))
    n_val = len(toks) // 10
    d = os.path.join(lc, 'dev', 'data', 'tinyshakespeare')
    os.makedirs(d, exist_ok=True)
    for name, part in (('tiny_shakespeare_val.bin', toks[:n_val]), ('tiny_shakespeare_train.bin', toks[n_val:])):
        hdr = array.array('i', [0] * 256)
        hdr[0], hdr[1], hdr[2] = 20240520, 1, len(part)
        with open(os.path.join(d, name), 'wb') as f:
            hdr.tofile(f)
            part.tofile(f)
    maxT, V, L, NH, C = 64, len(chars), 4, 4, 128
    Vp = (V + 63) // 64 * 64
    hdr = array.array('i', [0] * 256)
    hdr[0:8] = array.array('i', [20240326, 3, maxT, V, L, NH, C, Vp])
    rng = random.Random(0)
    sizes = [('wte', Vp * C, 0.02), ('wpe', maxT * C, 0.02), ('ln1w', L * C, 1), ('ln1b', L * C, 0),
             ('qkvw', L * 3 * C * C, 0.02), ('qkvb', L * 3 * C, 0), ('attprojw', L * C * C, 0.02),
             ('attprojb', L * C, 0), ('ln2w', L * C, 1), ('ln2b', L * C, 0), ('fcw', L * 4 * C * C, 0.02),
             ('fcb', L * 4 * C, 0), ('fcprojw', L * C * 4 * C, 0.02), ('fcprojb', L * C, 0), ('lnfw', C, 1),
             ('lnfb', C, 0)]
    with open(os.path.join(lc, 'gpt2_124M.bin'), 'wb') as f:
        hdr.tofile(f)
        for _, n, s in sizes:
            if s in (0, 1):
                array.array('f', [float(s)] * n).tofile(f)
            else:
                array.array('f', (rng.gauss(0.0, s) for _ in range(n))).tofile(f)


def median_after(xs, skip):
    xs = xs[skip:] if len(xs) > skip else xs
    return statistics.median(xs)


def train(args):
    lc = os.path.join(args.peers, 'llm.c')
    need_clone(lc)
    exe = os.path.join(lc, 'train_gpt2_peers')
    if not os.access(exe, os.X_OK):
        die('%s is missing: run `scripts/peers.py build --peers %s` first' % (exe, args.peers))
    write_llmc_files(lc, os.path.join(ROOT, 'data', 'tinyshakespeare.txt'))
    work = tempfile.mkdtemp(prefix='kvlab-peers-')
    B, T = 12, 64
    res = {'kvlab 2 threads': [], 'llm.c 2 threads': []}
    for r in range(args.rounds):
        log = os.path.join(work, 'train.jsonl')
        run([os.path.join(BUILD, 'train'), '--preset', 'baby', '--steps', str(args.steps), '--eval-interval',
             '100000', '--eval-windows', '1', '--out', os.path.join(work, 'b.ckpt'), '--force', '--log', log,
             '--quiet'], env={'OMP_NUM_THREADS': '2'})
        tps = [json.loads(line)['tokens_per_s'] for line in open(log)]
        res['kvlab 2 threads'].append(median_after(tps, 3))
        out, _ = run([exe], env={'OMP_NUM_THREADS': '2'}, cwd=lc)
        ms = [float(x) for x in re.findall(r'took ([0-9.]+) ms', out)]
        if not ms:
            die('llm.c printed no step times')
        res['llm.c 2 threads'].append(B * T / (median_after(ms, 3) / 1000.0))
        print('round %d/%d: %s' % (r + 1, args.rounds, ', '.join('%s %.0f' % (k, v[-1]) for k, v in res.items())),
              file=sys.stderr)
    shutil.rmtree(work)
    report('training tokens/s, baby shape (4 layers, 4 heads, width 128, batch 12 x 64)', res, args,
           [('kvlab 2 threads', 'llm.c 2 threads')])


# --- reporting ------------------------------------------------------------------------------------------------


def report(title, res, args, ratios):
    print('# %s' % title)
    print('# CPU: %s; %s' % (cpu_model(), blas_line()))
    print('# peers: llama2.c %s, llm.c %s; %d interleaved rounds%s' %
          (git_head(os.path.join(args.peers, 'llama2.c')), git_head(os.path.join(args.peers, 'llm.c')),
           args.rounds, ', a busy process on CPU 1' if args.busy else ''))
    for k, v in res.items():
        print('%-28s median %9.1f   range %.1f - %.1f' % (k, statistics.median(v), min(v), max(v)))
    for a, b in ratios:
        per_round = [x / y for x, y in zip(res[a], res[b])]
        print('ratio %s / %s: median %.2f, range %.2f - %.2f (per round)' %
              (a, b, statistics.median(per_round), min(per_round), max(per_round)))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('what', choices=['build', 'decode', 'train'])
    p.add_argument('--peers', required=True, help='scratch folder holding llama2.c/ and llm.c/ checkouts')
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds (default 5)')
    p.add_argument('--steps', type=int, default=40, help='training steps per kvlab run (default 40, as llm.c)')
    p.add_argument('--busy', action='store_true', help='a competing busy process on CPU 1 during the runs')
    args = p.parse_args()
    if args.rounds < 1 or args.steps < 5:
        die('--rounds must be >= 1 and --steps >= 5')
    args.peers = os.path.abspath(args.peers)
    if args.what == 'build':
        return build(args.peers)
    busy = None
    if args.busy:
        busy = subprocess.Popen(['taskset', '-c', '1', 'sh', '-c', 'while :; do :; done'])
        time.sleep(0.2)
    try:
        (decode if args.what == 'decode' else train)(args)
    finally:
        if busy:
            busy.kill()


if __name__ == '__main__':
    main()
