"""Tier 2 of the report (scripts/report.py): fewer key/value heads. MHA, GQA and MQA trained from scratch with
equal steps (the extremes on three seeds), MHA converted by pooling and uptrained, the uptraining question as an
experiment (validation loss against the uptraining fraction, with its controls and both initialisations), and
batched decode throughput with the largest batch that fits a fixed KV budget (build/bench --decode-batch)."""
import os

import report_stats as S

FRACTIONS = (0.05, 0.1, 0.2, 0.5)  # of the pretraining steps; 0 is the pooled model itself
UPTRAIN = ['--warmup', '5', '--lr', '5e-4', '--seed', '4']  # the uptraining recipe of every conversion here


def steps_of(sc):
    a = sc['attn_preset']
    return int(a[a.index('--steps') + 1])


def run(R, sc, bin_dir, rel, val, dev, res):
    ck, res['attn'], res['attn_seeds'] = {}, {}, {}
    for attn in sc['attn']:
        ck[attn] = R.train_step('attn-' + attn.replace(':', ''), 'tier 2: train %s from scratch' % attn,
                                sc['attn_preset'] + ['--attn', attn, '--seed', '3'] + dev)
    res['t2_models'] = ck
    streams = str(sc['streams'])
    for attn in sc['attn']:
        base = [bin_dir + '/infer', '--ckpt', rel(ck[attn]), '--eval', rel(val), '--kv', 'full', '--json']
        res['attn'][attn] = R.json_step('t2-eval-' + attn.replace(':', ''), 'tier 2: evaluate %s' % attn,
                                        [base + ['--streams', streams], base + ['--context', '1024', '--prefill', '992', '--streams', '1']])
    seed_models = {sc['t2_seeds'][0]: ck[sc['attn'][0]]}  # MHA by seed, for the uptraining experiment
    for attn in sc['t2_seed_attn']:
        for seed in sc['t2_seeds'][1:]:
            m = R.train_step('attn-%s-s%d' % (attn.replace(':', ''), seed), 'tier 2: train %s, seed %d' % (attn, seed),
                             sc['attn_preset'] + ['--attn', attn, '--seed', str(seed)] + dev)
            if attn == sc['attn'][0]:
                seed_models[seed] = m
            res['attn_seeds'].setdefault(attn, []).append(R.json_step(
                't2-eval-%s-s%d' % (attn.replace(':', ''), seed), 'tier 2: evaluate %s, seed %d' % (attn, seed),
                [[bin_dir + '/infer', '--ckpt', rel(m), '--eval', rel(val), '--kv', 'full', '--json', '--streams', streams]])[0])
    mha = ck[sc['attn'][0]]
    res['convert'] = {}
    for G in sc['convert']:
        base = [bin_dir + '/infer', '--ckpt', rel(mha), '--kv-heads', str(G), '--eval', rel(val), '--kv', 'full', '--json', '--streams', streams]
        res['convert'][G] = {'pooled': R.json_step('t2-pool-%d' % G, 'tier 2: MHA mean-pooled to %d kv heads' % G, [base])}
        up = R.train_step('uptrain-%d' % G, 'tier 2: uptrain the pooled %d-head model (%d steps)' % (G, sc['uptrain_steps']),
                          ['--init-from', rel(mha), '--attn', 'mqa' if G == 1 else 'gqa:%d' % G, '--steps',
                           str(sc['uptrain_steps'])] + UPTRAIN + dev)
        res['convert'][G]['uptrained'] = R.json_step('t2-uptrained-%d' % G, 'tier 2: evaluate the uptrained %d-head model' % G, [
            [bin_dir + '/infer', '--ckpt', rel(up), '--eval', rel(val), '--kv', 'full', '--json', '--streams', streams]])
    # the uptraining experiment on each MHA seed of uptrain_seeds
    res['uptrain_exp'] = {seed: uptrain_experiment(R, sc, rel, seed_models[seed], seed, seed == sc['t2_seeds'][0], dev)
                          for seed in sc['uptrain_seeds']}
    res['decode_batch'] = R.json_step('t2-decode-batch', 'tier 2: batched decode, MHA/GQA/MQA (build/bench --decode-batch)',
                                      [[bin_dir + '/bench', '--decode-batch', '--json'] + sc['decode_batch']])


def uptrain_experiment(R, sc, rel, mha, seed, first, dev):
    """Validation loss (build/train's, the same windows in every run) against the uptraining fraction, from the MHA
    model of one seed: mean-pooled and first-head initialisations, and the two controls. The first seed's runs keep
    their names; the others' carry -sSEED, and their uptraining data seed is the model's seed + 1."""
    G = sc['uptrain_G']
    attn = 'mqa' if G == 1 else 'gqa:%d' % G
    N = steps_of(sc)
    tag, of = ('', '') if first else ('-s%d' % seed, ', seed %d' % seed)
    up = UPTRAIN if first else UPTRAIN[:-1] + [str(seed + 1)]
    ev = ['--eval-interval', str(max(1, int(N * FRACTIONS[0])))]
    exp = {}
    for init in ('mean', 'first'):
        exp[init] = {0: R.train_step('up-%s-0%s' % (init, tag), 'tier 2: %s-pooled %d-head model as converted (one step at lr 1e-9)%s' % (init, G, of),
                                     ['--init-from', rel(mha), '--attn', attn, '--kv-init', init, '--steps', '1', '--warmup', '0',
                                      '--lr', '1e-9', '--min-lr', '1e-9', '--seed', up[-1]] + dev)}
        for f in FRACTIONS:
            exp[init][f] = R.train_step('up-%s-%g%s' % (init, f, tag), 'tier 2: uptrain %s-pooled, fraction %g (%d steps)%s' % (init, f, round(f * N), of),
                                        ['--init-from', rel(mha), '--attn', attn, '--kv-init', init, '--steps', str(round(f * N))] +
                                        up + dev)
    last = round(FRACTIONS[-1] * N)
    exp['mha_continued'] = R.train_step('up-mha-continued%s' % tag, 'tier 2: control, MHA continued %d steps%s' % (last, of),
                                        ['--init-from', rel(mha), '--steps', str(last)] + ev + up + dev)
    pre = [a for i, a in enumerate(sc['attn_preset']) if a != '--steps' and (i == 0 or sc['attn_preset'][i - 1] != '--steps')]
    exp['scratch'] = R.train_step('up-scratch%s' % tag, 'tier 2: control, %s from scratch for %d steps%s' % (attn, N + last, of),
                                  pre + ['--attn', attn, '--steps', str(N + last), '--seed', str(seed)] + ev + dev)
    exp['mha'] = mha
    return exp


def val_losses(path):
    """{step: val_loss} of a training log (report/raw/train-NAME.jsonl)."""
    out = {}
    with open(path) as f:
        for line in f:
            if '"val_loss"' in line:
                import json
                r = json.loads(line)
                if r.get('val_loss') is not None:
                    out[r['step']] = r['val_loss']
    return out


def uptrain_losses(raw, exp, sc):
    """One seed's experiment as final validation losses: {'mean'|'first': {f: loss}, 'cont'|'scratch': {f: loss},
    'mha': the MHA model's own}."""
    N = steps_of(sc)
    name = lambda p: os.path.join(raw, 'train-%s.jsonl' % os.path.basename(p)[:-len('.ckpt')])
    end = lambda v: v[max(v)]
    mha_end = end(val_losses(name(exp['mha'])))
    cont, scratch = val_losses(name(exp['mha_continued'])), val_losses(name(exp['scratch']))
    out = {'mha': mha_end, 'mean': {}, 'first': {}, 'cont': {}, 'scratch': {}}
    for f in (0,) + FRACTIONS:
        steps = round(f * N)
        for init in ('mean', 'first'):
            out[init][f] = end(val_losses(name(exp[init][f])))
        c = mha_end if f == 0 else cont.get(steps)
        if c is not None:
            out['cont'][f] = c
        if scratch.get(N + steps) is not None:
            out['scratch'][f] = scratch[N + steps]
    return out


def _spread(values):
    """'mean [min, max]' over seeds, or the one value."""
    if len(values) == 1:
        return '%.4f' % values[0]
    return '%.4f [%.4f, %.4f]' % (sum(values) / len(values), min(values), max(values))


def _diff_text(d, what):
    """The mean over seeds of paired differences d, with a t interval and whether it excludes 0."""
    if len(d) < 2:
        return '%s %+.4f (one seed: no interval)' % (what, d[0])
    m, lo, hi = S.mean_ci(d)
    verdict = 'the interval excludes 0' if lo > 0 or hi < 0 else 'indistinguishable from 0'
    return '%s %+.4f [%+.4f, %+.4f] over %d seeds, %s' % (what, m, lo, hi, len(d), verdict)


def write_uptrain(md, res, sc, raw, img, work, gnuplot, table):
    seeds = sorted(res['uptrain_exp'])
    L = [uptrain_losses(raw, res['uptrain_exp'][s], sc) for s in seeds]
    G = sc['uptrain_G']
    N = steps_of(sc)
    rows, data = [], {'mean': [], 'first': [], 'cont': [], 'scratch': []}
    for f in (0,) + FRACTIONS:
        cells = []
        for key in ('mean', 'first', 'cont', 'scratch'):
            v = [l[key][f] for l in L if f in l[key]]
            cells.append(_spread(v) if len(v) == len(L) else '')
            if len(v) == len(L):
                data[key].append((f, sum(v) / len(v), min(v), max(v)))
        rows.append(['%g' % f, round(f * N)] + cells)
    md.append('### Uptraining: how much is enough?\n')
    md.append('MHA (%d steps, validation loss %s) converted to %d key/value heads, then uptrained for a fraction of '
              'its pretraining steps (each fraction its own run: warm-up 5, lr 5e-4 decaying to 5e-5 within the run). '
              'Controls: the MHA model continued with the same recipe (validation every %d steps of one %d-step run), '
              'and the %d-head model trained from scratch for the pretraining steps plus the fraction (one run of %d '
              'steps, read at each point; its schedule spans the whole run). Validation loss is build/train\'s: the same '
              'windows for every run. Fraction 0 is one step at lr 1e-9 (the converted weights). %s\n' % (
                  N, _spread([l['mha'] for l in L]), G, max(1, int(N * FRACTIONS[0])), round(FRACTIONS[-1] * N), G,
                  N + round(FRACTIONS[-1] * N),
                  'Every run on %d MHA seeds (%s; the uptraining\'s data seed differs with the model\'s): cells give the '
                  'mean over seeds [min, max].' % (len(seeds), ', '.join(map(str, seeds))) if len(seeds) > 1 else 'One seed.'))
    md.append(table(['fraction', 'steps', 'mean-pooled init', 'first-head init', 'control: MHA continued',
                     'control: %d heads from scratch, %d + steps' % (G, N)], rows) + '\n')
    gnuplot(os.path.join(img, 'tier2-uptrain.png'),
            "set title 'Uptraining MHA to %d kv heads (bars: range over seeds)'\n"
            "set xlabel 'uptraining steps / pretraining steps'\nset ylabel 'validation loss (nats/token)'\n"
            "plot 'mean.dat' u 1:2:3:4 w yerrorlines pt 7 t 'mean-pooled init', 'first.dat' u 1:2:3:4 w yerrorlines pt 5 t 'first-head init', "
            "'cont.dat' u 1:2:3:4 w yerrorlines pt 9 dt 2 t 'control: MHA continued', "
            "'scratch.dat' u 1:2:3:4 w yerrorlines pt 11 dt 3 t 'control: from scratch'\n" % G,
            data, work)
    md.append('![uptraining](img/tier2-uptrain.png)\n')
    last = FRACTIONS[-1]
    avg = lambda v: sum(v) / len(v)
    gap0 = avg([l['mean'][0] - l['mha'] for l in L])
    gapN = [l['mean'][last] - l['cont'][last] for l in L if last in l['cont']]
    init0 = [l['mean'][0] - l['first'][0] for l in L]
    initN = [l['mean'][last] - l['first'][last] for l in L]
    return dict(gap0=gap0, gapN=avg(gapN) if len(gapN) == len(L) else None, gapN_text=_diff_text(gapN, 'gap') if len(gapN) == len(L) else None,
                init0=_diff_text(init0, 'mean-pooled minus first-head'), initN=_diff_text(initN, 'mean-pooled minus first-head'),
                seeds=len(L))


def write_decode_batch(md, res, img, work, gnuplot, table):
    rows = [r for r in res['decode_batch'] if r.get('bench') == 'decode_batch']
    budget = [r for r in res['decode_batch'] if r.get('bench') == 'decode_budget']
    md.append('### Batched decode: what fewer key/value heads buy at inference\n')
    if not rows:
        md.append('(build/bench --decode-batch gave no rows.)\n')
        return
    md.append('Random weights of the tier-2 shape, full fp32 caches prefilled to the context, then decode steps of the whole '
              'batch at once (one thread); tokens/s as median of the runs with [min, max].\n')
    md.append(table(['kv heads', 'batch', 'context', 'tokens/s median [min, max]', 'ms/step', 'KV MB/sequence'],
                    [[r['kv_heads'], r['batch'], r['context'], '%.0f [%.0f, %.0f]' % (r['tokens_per_s_median'], r['tokens_per_s_min'],
                                                                                   r['tokens_per_s_max']),
                      '%.3f' % r['ms_per_step_median'], '%.3f' % (r['kv_bytes_per_seq'] / 1e6)] for r in rows]) + '\n')
    if budget:
        md.append('The largest batch that fits a KV budget of %.0f MiB, and its throughput:\n' % (budget[0]['budget_bytes'] / 2 ** 20))
        md.append(table(['kv heads', 'context', 'largest batch', 'tokens/s (median)'],
                        [[r['kv_heads'], r['context'], ('≥%d (capped)' % r['max_batch']) if r.get('capped') else r['max_batch'],
                          '%.0f' % r['tokens_per_s_median']] for r in budget]) + '\n')
    data = {}
    for r in rows:
        data.setdefault('kv%d_T%d' % (r['kv_heads'], r['context']), []).append((r['batch'], r['tokens_per_s_median'],
                                                                                 r['tokens_per_s_min'], r['tokens_per_s_max']))
    lines = ', '.join("'%s.dat' u 1:2:3:4 w yerrorlines t '%s'" % (k, k.replace('_', ' ').replace('kv', 'kv heads ').replace('T', 'ctx '))
                      for k in sorted(data))
    gnuplot(os.path.join(img, 'tier2-decode-batch.png'),
            "set title 'Batched decode throughput (bars: min and max of the runs)'\nset xlabel 'batch'\n"
            "set ylabel 'tokens/s'\nset logscale xy\nset key outside right font ',9' samplen 2 width -2\nset rmargin 30\n"
            "plot %s\n" % lines, data, work, size='1300,650')
    md.append('![batched decode](img/tier2-decode-batch.png)\n')


def seed_spread(res, sc):
    """Per attention kind trained on several seeds: the ppl of each seed's model (the main one first)."""
    out = {}
    for attn, rs in res['attn_seeds'].items():
        out[attn] = [res['attn'][attn][0]['ppl_full']] + [r['ppl_full'] for r in rs]
    return out


def gap_vs_control(res, sc, raw, f):
    """Validation loss of the mean-pooled model uptrained for fraction f, minus the MHA model continued for the
    same steps (the control: both trained that much longer), as the mean over the experiment's seeds."""
    d = []
    for exp in res['uptrain_exp'].values():
        l = uptrain_losses(raw, exp, sc)
        if f not in l['cont']:
            return None
        d.append(l['mean'][f] - l['cont'][f])
    return sum(d) / len(d)
