#!/usr/bin/env python3
"""Data-parallel training speed (BENCHMARKS.md, "Training on several processes"): build/train on one process and
under mpirun, interleaved, at the same global batch, the median and range of each configuration's tokens/s.

  scripts/mpi_bench.py [--bin build] [--repeats 3] [--steps 30] [--preset small]

Configurations (cores = 2 on the machine of BENCHMARKS.md; ranks x threads never exceeds them):
  1 rank  x 1 thread,  --grad-accum 2   (the single-core baseline of the scaling efficiency)
  1 rank  x 2 threads, --grad-accum 2   (the same cores as threads)
  2 ranks x 1 thread,  --grad-accum 1   (the same cores as ranks)
A run's speed is the median of its per-step tokens/s from --log (rank 0's clock: it includes the all-reduce),
leaving out the first step (warm-up). The rounds run one configuration after another, repeated, so a slow
stretch of a shared machine hits every configuration alike.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

MPIRUN = ['mpirun', '--allow-run-as-root', '--bind-to', 'core', '--mca', 'btl', 'self,vader',
          '--mca', 'btl_vader_single_copy_mechanism', 'none']


def run(cmd, env, log):
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    if p.returncode != 0:
        sys.exit('failed: %s\n%s' % (' '.join(cmd), p.stderr))
    with open(log) as f:
        rates = [json.loads(line)['tokens_per_s'] for line in f][1:]
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--bin', default='build')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--steps', type=int, default=30)
    ap.add_argument('--preset', default='small')
    a = ap.parse_args()
    train = os.path.join(a.bin, 'train')
    tmp = tempfile.mkdtemp(prefix='kvlab-mpi-bench-')
    common = ['--preset', a.preset, '--steps', str(a.steps), '--eval-interval', '0', '--eval-windows', '16',
              '--quiet']
    configs = [('1 rank x 1 thread', 1, 1, 2), ('1 rank x 2 threads', 1, 2, 2), ('2 ranks x 1 thread', 2, 1, 1)]
    results = {name: [] for name, *_ in configs}
    for rep in range(a.repeats):
        for name, ranks, threads, accum in configs:
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            log, ckpt = os.path.join(tmp, 'log.jsonl'), os.path.join(tmp, 'run.ckpt')
            for path in (log, ckpt):
                if os.path.exists(path):
                    os.remove(path)
            cmd = [train] + common + ['--grad-accum', str(accum), '--log', log, '--out', ckpt]
            if ranks > 1:
                cmd = MPIRUN + ['-np', str(ranks)] + cmd
            results[name].append(run(cmd, env, log))
            print('round %d: %-20s %8.0f tokens/s' % (rep + 1, name, results[name][-1]), file=sys.stderr)
    base = statistics.median(results['1 rank x 1 thread'])
    threads = statistics.median(results['1 rank x 2 threads'])
    print('| configuration | tokens/s (median) | range | vs 1 rank x 1 thread |')
    print('|---|---|---|---|')
    for name, *_ in configs:
        r = results[name]
        print('| %s | %.0f | %.0f-%.0f | %.2fx |' % (name, statistics.median(r), min(r), max(r),
                                                    statistics.median(r) / base))
    ranks = statistics.median(results['2 ranks x 1 thread'])
    print('\nscaling efficiency of 2 ranks: %.0f%% (tokens/s / (2 x 1 rank x 1 thread)); '
          '2 ranks / 1 rank x 2 threads: %.2fx' % (100 * ranks / (2 * base), ranks / threads))


if __name__ == '__main__':
    main()
