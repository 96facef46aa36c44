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
    for attn in sc['t2_seed_attn']:
        for seed in sc['t2_seeds'][1:]:
            m = R.train_step('attn-%s-s%d' % (attn.replace(':', ''), seed), 'tier 2: train %s, seed %d' % (attn, seed),
                             sc['attn_preset'] + ['--attn', attn, '--seed', str(seed)] + dev)
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
    # the uptraining experiment: validation loss (build/train's, the same windows in every run) against the fraction
    G = sc['uptrain_G']
    attn = 'mqa' if G == 1 else 'gqa:%d' % G
    N = steps_of(sc)
    ev = ['--eval-interval', str(max(1, int(N * FRACTIONS[0])))]
    exp = {}
    for init in ('mean', 'first'):
        exp[init] = {0: R.train_step('up-%s-0' % init, 'tier 2: %s-pooled %d-head model as converted (one step at lr 1e-9)' % (init, G),
                                     ['--init-from', rel(mha), '--attn', attn, '--kv-init', init, '--steps', '1', '--warmup', '0',
                                      '--lr', '1e-9', '--min-lr', '1e-9', '--seed', '4'] + dev)}
        for f in FRACTIONS:
            exp[init][f] = R.train_step('up-%s-%g' % (init, f), 'tier 2: uptrain %s-pooled, fraction %g (%d steps)' % (init, f, round(f * N)),
                                        ['--init-from', rel(mha), '--attn', attn, '--kv-init', init, '--steps', str(round(f * N))] +
                                        UPTRAIN + dev)
    last = round(FRACTIONS[-1] * N)
    exp['mha_continued'] = R.train_step('up-mha-continued', 'tier 2: control, MHA continued %d steps' % last,
                                        ['--init-from', rel(mha), '--steps', str(last)] + ev + UPTRAIN + dev)
    pre = [a for i, a in enumerate(sc['attn_preset']) if a != '--steps' and (i == 0 or sc['attn_preset'][i - 1] != '--steps')]
    exp['scratch'] = R.train_step('up-scratch', 'tier 2: control, %s from scratch for %d steps' % (attn, N + last),
                                  pre + ['--attn', attn, '--steps', str(N + last), '--seed', '3'] + ev + dev)
    res['uptrain_exp'] = exp
    res['decode_batch'] = R.json_step('t2-decode-batch', 'tier 2: batched decode, MHA/GQA/MQA (build/bench --decode-batch)',
                                      [[bin_dir + '/bench', '--decode-batch', '--json'] + sc['decode_batch']])


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


def write_uptrain(md, res, sc, raw, img, work, gnuplot, table):
    exp = res['uptrain_exp']
    G = sc['uptrain_G']
    N = steps_of(sc)
    name = lambda p: os.path.join(raw, 'train-%s.jsonl' % os.path.basename(p)[:-len('.ckpt')])
    mha_val = val_losses(os.path.join(raw, 'train-attn-mha.jsonl'))
    mha_end = mha_val[max(mha_val)]
    scratch = val_losses(name(exp['scratch']))
    cont = val_losses(name(exp['mha_continued']))
    rows, data = [], {'mean': [], 'first': [], 'cont': [], 'scratch': []}
    for f in (0,) + FRACTIONS:
        steps = round(f * N)
        vm = val_losses(name(exp['mean'][f]))
        vf = val_losses(name(exp['first'][f]))
        m, fi = vm[max(vm)], vf[max(vf)]
        c = cont.get(steps, mha_end if f == 0 else None)
        sc_ = scratch.get(N + steps)
        rows.append(['%g' % f, steps, '%.4f' % m, '%.4f' % fi, '%.4f' % c if c is not None else '', '%.4f' % sc_ if sc_ is not None else ''])
        data['mean'].append((f, m))
        data['first'].append((f, fi))
        if c is not None:
            data['cont'].append((f, c))
        if sc_ is not None:
            data['scratch'].append((f, sc_))
    md.append('### Uptraining: how much is enough?\n')
    md.append('MHA (%d steps, validation loss %.4f) converted to %d key/value heads, then uptrained for a fraction of '
              'its pretraining steps (each fraction its own run: warm-up 5, lr 5e-4 decaying to 5e-5 within the run). '
              'Controls: the MHA model continued with the same recipe (validation every %d steps of one %d-step run), '
              'and the %d-head model trained from scratch for the pretraining steps plus the fraction (one run of %d '
              'steps, read at each point; its schedule spans the whole run). Validation loss is build/train\'s: the same '
              'windows for every run. Fraction 0 is one step at lr 1e-9 (the converted weights).\n' % (
                  N, mha_end, G, max(1, int(N * FRACTIONS[0])), round(FRACTIONS[-1] * N), G, N + round(FRACTIONS[-1] * N)))
    md.append(table(['fraction', 'steps', 'mean-pooled init', 'first-head init', 'control: MHA continued',
                     'control: %d heads from scratch, %d + steps' % (G, N)], rows) + '\n')
    gnuplot(os.path.join(img, 'tier2-uptrain.png'),
            "set title 'Uptraining MHA to %d kv heads: validation loss against the fraction of pretraining'\n"
            "set xlabel 'uptraining steps / pretraining steps'\nset ylabel 'validation loss (nats/token)'\n"
            "plot 'mean.dat' w lp pt 7 t 'mean-pooled init', 'first.dat' w lp pt 5 t 'first-head init', "
            "'cont.dat' w lp pt 9 dt 2 t 'control: MHA continued', 'scratch.dat' w lp pt 11 dt 3 t 'control: from scratch'\n" % G,
            data, work)
    md.append('![uptraining](img/tier2-uptrain.png)\n')
    first, half = rows[0], rows[-1]
    gap0 = float(first[2]) - mha_end
    gapN = float(half[2]) - float(half[4]) if half[4] else None
    return gap0, gapN, float(first[2]), float(first[3]), float(half[2]), float(half[3])


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
    same steps (the control: both trained that much longer)."""
    exp = res['uptrain_exp']
    name = lambda p: os.path.join(raw, 'train-%s.jsonl' % os.path.basename(p)[:-len('.ckpt')])
    v = val_losses(name(exp['mean'][f]))
    cont = val_losses(name(exp['mha_continued']))
    c = cont.get(round(f * steps_of(sc)))
    return None if c is None else v[max(v)] - c
