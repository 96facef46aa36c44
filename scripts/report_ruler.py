"""The retrieval suite of the report (scripts/report.py): build/infer ruler, a RULER-like set of needle tasks
(one needle, a needle among distractor keys, two needles both queried) with the needle's depth spread over the
context, through each eviction policy at compression ratios in the kvpress sense (the fraction of the context's
tokens removed), with the cache compressed before the question (query-agnostic) and after it (query-aware).
Scores are shares of items answered exactly, with Wilson intervals."""
import os

import report_stats as S
from report_tier1 import FORMS

KEEP = (0.125, 0.25, 0.5, 0.75)  # kept fractions: compression ratios 0.875, 0.75, 0.5, 0.25
TASKS = 'single,multikey,multiquery'

# name -> spec of a budget B (report_tier1's forms; SnapKV's observation window capped at 16 here) and kvpress's
# press that plays the part, for the comparison with its leaderboard
PRESS = {'window': None, 'sink+window': 'StreamingLLM', 'h2o': 'ObservedAttention', 'tova': 'TOVA', 'snapkv': 'SnapKV',
         'l2norm': 'Knorm', 'random': 'Random'}
POLICIES = {name: (FORMS[name][0], press) for name, press in PRESS.items()}
POLICIES['snapkv'] = (lambda B: 'snapkv:%d,%d' % (B - min(16, B // 2), min(16, B // 2)), 'SnapKV')

# kvpress's README leaderboard, RULER-4k, compression ratio 0.5 (shared/reference/kv-techniques.md: read off the
# plot by eye, the model probably Llama-3.1-8B-Instruct); SnapKV query-aware is "SnapKV, compressed question"
KVPRESS_05 = {'SnapKV (query-aware)': 88, 'TOVA': 75.4, 'SnapKV': 67, 'StreamingLLM': 60, 'ObservedAttention': 50.7,
              'Knorm': 49.7, 'Random': 7.6}


def cells(C):
    out = []
    for keep in KEEP:
        B = max(6, int(round(keep * C)))
        for name, (form, _) in POLICIES.items():
            for mode in ('agnostic', 'aware'):
                out.append((keep, name, mode, form(B)))
    return out


def run(R, sc, bin_dir, rel, model, res):
    C = sc['context']
    base = lambda spec, mode: [bin_dir + '/infer', 'ruler', '--ckpt', rel(model), '--kv', spec, '--context', str(C), '--items',
                               str(sc['ruler_items']), '--tasks', TASKS, '--query', mode, '--json']
    res['ruler_full'] = R.json_step('ruler-full', 'retrieval: the full cache (%d items per task)' % sc['ruler_items'],
                                    [base('full', m) for m in ('agnostic', 'aware')], jobs=2)
    rows = []
    for keep in KEEP:
        cs = [c for c in cells(C) if c[0] == keep]
        out = R.json_step('ruler-keep%g' % keep, 'retrieval: %d cells at %.3g of the context kept' % (len(cs), keep),
                          [base(spec, mode) for _, _, mode, spec in cs], jobs=2)
        by = {(r['spec'], r['query'], r['task']): r for r in out}
        for k, name, mode, spec in cs:
            for task in TASKS.split(','):
                r = by[(spec, mode, task)]
                rows.append(dict(keep=keep, name=name, mode=mode, task=task, spec=spec, correct=r['correct'],
                                 items=r['items'], row=r))
    res['ruler'] = rows


def score(rows):
    """(correct, items) summed over tasks."""
    return sum(r['correct'] for r in rows), sum(r['items'] for r in rows)


def write(md, res, sc, img, work, gnuplot, table):
    rows = res['ruler']
    full = {(r['query'], r['task']): r for r in res['ruler_full']}
    tasks = TASKS.split(',')
    md.append('## Retrieval: a RULER-like suite\n')
    md.append('**The question:** which eviction policy keeps what a later question needs, and does it matter whether '
              'the cache is compressed before the question is seen (query-agnostic, as a cache shared by many questions '
              'must be) or after (query-aware)?\n')
    md.append('Model: the tier-1 recall model, context %d. Tasks (%d items each, the needle\'s depth spread over 5 '
              'buckets of the context): `single` (one `$kk:vvvv;` definition, queried at the end), `multikey` (four '
              'definitions, one queried), `multiquery` (two queried, both must be right). An item counts when every '
              'answer character is the top-1 prediction. Budgets are the kept fraction of the context; the '
              'compression ratio (kvpress\'s term) is one minus it. Policies evict online while the prompt goes in, '
              'where kvpress prunes once after a full prefill.\n' % (sc['context'], sc['ruler_items']))
    md.append('Full cache: ' + '; '.join('%s %s' % (t, S.fmt_prop_ci(S.wilson(full[('aware', t)]['correct'], full[('aware', t)]['items'])))
                                        for t in tasks) + '.\n')
    data, lines = {}, []
    for mode in ('agnostic', 'aware'):
        trs = []
        for name in POLICIES:
            cells_ = []
            for keep in KEEP:
                these = [r for r in rows if r['name'] == name and r['mode'] == mode and r['keep'] == keep]
                k, n = score(these)
                ci = S.wilson(k, n)
                cells_.append(S.fmt_prop_ci(ci))
                data.setdefault('%s_%s' % (name.replace('+', '_'), mode), []).append((1 - keep, ci[0], ci[1], ci[2]))
            trs.append(['`%s`' % name] + cells_)
        md.append('**Compression %s the question** (all three tasks pooled, [95%% Wilson interval]):\n' % (
            'before' if mode == 'agnostic' else 'after'))
        md.append(table(['policy'] + ['ratio %.3g (keep %.3g)' % (1 - k, k) for k in KEEP], trs) + '\n')
    for i, name in enumerate(POLICIES):
        for mode, dt in (('agnostic', 2), ('aware', 1)):
            lines.append("'%s_%s.dat' u 1:2:3:4 w yerrorlines dt %d pt %d lc %d t '%s, %s'" % (
                name.replace('+', '_'), mode, dt, 5 + i, i + 1, name, mode))
    gnuplot(os.path.join(img, 'ruler.png'),
            "set title 'Retrieval score against compression ratio (solid: query-aware, dashed: query-agnostic)'\n"
            "set xlabel 'compression ratio (fraction of the context removed)'\nset ylabel 'score (exact)'\n"
            "set yrange [-0.02:1.05]\nset key outside right font ',9' samplen 2 width -2\nset rmargin 34\nplot %s\n" % ', '.join(lines),
            data, work, size='1400,700')
    md.append('![retrieval against compression](img/ruler.png)\n')
    # by task at 0.5
    trs = []
    for name in POLICIES:
        for mode in ('agnostic', 'aware'):
            these = [r for r in rows if r['name'] == name and r['mode'] == mode and r['keep'] == 0.5]
            single = [r for r in these if r['task'] == 'single'][0]['row']
            trs.append(['`%s`' % name, mode] + [S.fmt_prop_ci(S.wilson(r['correct'], r['items'])) for t in tasks
                                                for r in these if r['task'] == t] +
                       ['%.3f' % (single['kv_bytes_mean'] / single['fp16_bytes_full'])])
    md.append('At ratio 0.5, by task, with what the cache holds while it answers (`single`: mean bytes over the answer '
              'steps against a full fp16 cache of the prompt; SnapKV appends the question and answer tokens after it '
              'compresses, so it holds a little more than the others):\n')
    md.append(table(['policy', 'compressed'] + tasks + ['bytes vs fp16 (single; fp32 rows, so 0.5 kept is about 1x)'], trs) + '\n')
    return ordering_vs_kvpress(md, rows, table)


def ordering_vs_kvpress(md, rows, table):
    """Our ordering at ratio 0.5 beside kvpress's published RULER-4k ordering."""
    ours = {}
    for name, (_, press) in POLICIES.items():
        if not press:
            continue
        mode = 'agnostic'
        k, n = score([r for r in rows if r['name'] == name and r['mode'] == mode and r['keep'] == 0.5])
        ours[press] = (k, n)
    k, n = score([r for r in rows if r['name'] == 'snapkv' and r['mode'] == 'aware' and r['keep'] == 0.5])
    ours['SnapKV (query-aware)'] = (k, n)
    paper_rank = sorted(KVPRESS_05, key=lambda p: -KVPRESS_05[p])
    ci = {p: S.wilson(*ours[p]) for p in ours}
    # a shared rank for what the intervals cannot separate: 1 + the presses whose interval is wholly above
    rank = {p: 1 + sum(1 for q in ours if ci[q][1] > ci[p][2]) for p in ours}
    our_rank = sorted(ours, key=lambda p: (rank[p], -ci[p][0]))
    chain = ''
    for i, p in enumerate(our_rank):  # '=' joins presses of one shared rank, '>' separates ranks
        chain += ('' if i == 0 else ' = ' if rank[p] == rank[our_rank[i - 1]] else ' > ') + p
    trs = []
    for p in paper_rank:
        ties = [q for q in ours if q != p and not S.separated(ci[p], ci[q])]
        trs.append([p, '%.1f' % KVPRESS_05[p], paper_rank.index(p) + 1, S.fmt_prop_ci(ci[p]), rank[p],
                    ', '.join(ties) if ties else 'none'])
    md.append('### Against kvpress\'s RULER ordering at ratio 0.5\n')
    md.append('kvpress\'s leaderboard (RULER-4k, read off its plot; the model probably Llama-3.1-8B-Instruct) beside '
              'ours (query-agnostic unless marked; our `h2o` plays ObservedAttention, `sink+window` StreamingLLM). Our '
              'rank is shared by presses whose Wilson intervals overlap (1 + the number wholly above):\n')
    md.append(table(['press', 'kvpress score (%)', 'kvpress rank', 'ours, share [95% CI]', 'our rank', 'not separable from'], trs) + '\n')
    # inversions that the intervals support: kvpress puts p above q, our intervals put q wholly above p
    moved = ['%s above %s' % (q, p) for i, p in enumerate(paper_rank) for q in paper_rank[i + 1:]
             if KVPRESS_05[p] > KVPRESS_05[q] and ci[q][1] > ci[p][2]]
    return paper_rank, chain, moved, ours
