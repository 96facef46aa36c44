"""The pretrained tier of the report (scripts/report.py): SmolLM2-135M-Instruct from its GGUF file
(scripts/get-model.sh smollm2), beside the models trained here. It runs when the file is there and says so
when it is not: the positive sink control on a model that has sinks, the policies at about a quarter of a full
fp16 cache, and the retrieval suite at compression ratio 0.5 against kvpress's published ordering."""
import os

import report_ruler
import report_tier1
from report_tier1 import FORMS
import report_stats as S

MODEL = 'models/SmolLM2-135M-Instruct.Q4_1.gguf'


def specs_at(B):
    """The fp16 policies at budget B (report_tier1's forms), then storage terms where their formats put them."""
    return [(n, FORMS[n][0](B) + '+fp16') for n in ('window', 'sink+window', 'h2o', 'tova', 'l2norm', 'random')] + \
        [(s, s) for s in ('full+int4', 'full+kivi2', 'full+kivi4', 'full+int8')]


def run(R, sc, bin_dir, rel, root, val, res):
    path = os.path.join(root, MODEL)
    if not os.path.exists(path):
        res['pretrained'] = None
        return
    p = sc['pretrained']
    base = [bin_dir + '/infer', '--model', MODEL]
    out = {}
    BC = p['sink_cache']
    out['stream'] = R.json_step('pt-stream', 'pretrained: streaming %d tokens past a cache of %d' % (p['sink_stream'], BC), [
        base + ['--eval', rel(val), '--kv', spec, '--context', str(p['sink_stream']), '--prefill', str(BC), '--streams',
                str(p['streams']), '--json', '--curve', '16'] for spec in ('window:%d' % BC, 'sink:4,window:%d' % (BC - 4))], jobs=2)
    out['attn'] = R.json_step('pt-attention', 'pretrained: attention statistics over %d tokens' % (2 * BC), [
        base[:1] + ['attention'] + base[1:] + ['--out', rel(R.work), '--context', str(2 * BC), '--data', rel(val), '--json']])
    T = p['context']
    B = int(round(0.25 * (T // 2 + T - 1) / 2))
    out['B'] = B
    out['matched'] = R.json_step('pt-matched', 'pretrained: policies and formats near 0.25x at context %d' % T, [
        base + ['--eval', rel(val), '--kv', spec, '--context', str(T), '--streams', str(p['streams']), '--json']
        for _, spec in [('full', 'full')] + specs_at(B)], jobs=2)
    RT = p['ruler_context']
    keep = max(6, int(round(0.5 * RT)))
    cells = [(name, 'agnostic', form(keep)) for name, (form, _) in report_ruler.POLICIES.items()] + \
        [('snapkv', 'aware', report_ruler.POLICIES['snapkv'][0](keep)), ('full', 'agnostic', 'full')]
    ruler = R.json_step('pt-ruler', 'pretrained: retrieval at ratio 0.5, context %d (%d items)' % (RT, p['ruler_items']), [
        [bin_dir + '/infer', 'ruler', '--model', MODEL, '--kv', spec, '--context', str(RT), '--items', str(p['ruler_items']), '--tasks', 'single',
                '--query', mode, '--json'] for _, mode, spec in cells], jobs=2)
    by = {(r['spec'], r['query']): r for r in ruler}
    out['ruler'] = [dict(name=n, mode=m, spec=s, correct=by[(s, m)]['correct'], items=by[(s, m)]['items']) for n, m, s in cells]
    res['pretrained'] = out


def write(md, res, sc, img, work, gnuplot, table, write_stream):
    md.append('## A pretrained model: SmolLM2-135M-Instruct\n')
    out = res.get('pretrained')
    if not sc['pretrained']:
        md.append('Not part of this scale: what the tier measures does not depend on the models trained here, and the '
                  '--quick report (report/REPORT.md) runs it.\n')
        return None
    if not out:
        md.append('Not run: %s is not here (`scripts/get-model.sh smollm2` fetches it). The tier runs when it is.\n' % MODEL)
        return None
    p = sc['pretrained']
    md.append('The GGUF file of issue 14 (Q4_1 weights, dequantized to fp32), byte-level BPE, 30 layers, 9 query and 3 '
              'key/value heads of 64; the same validation text, tokenized by its own tokenizer.\n')
    md.append('### Its attention sink, and StreamingLLM\n')
    win, sink = write_stream(md, res, sc, img, work, gnuplot, table, 'pretrained',
                             'SmolLM2-135M: %d tokens through a cache of %d' % (p['sink_stream'], p['sink_cache']), out['stream'],
                             p['sink_cache'], None)
    md.append('- %s.' % S.compare_ppl(win, sink, '`%s`' % win['spec'], '`%s`' % sink['spec']))
    summ = [r for r in out['attn'] if r.get('type') == 'attn_summary']
    if summ:
        md.append('- ' + report_tier1.sink_verdict('SmolLM2-135M', summ[0], win, sink) +
                  ' Mean attention on token 0 over all heads: %.3f.' % summ[0]['mean']['sink1'])
    md.append('')
    rows = out['matched']
    full = rows[0]
    md.append('### Policies and formats near a quarter of a full fp16 cache\n')
    md.append('%d streams of %d tokens, scoring after %d; policies at budget %d in fp16 (a quarter of the %.0f tokens a '
              'full cache holds on average), storage terms where their format puts them. Full cache perplexity %.3f.\n' % (
                  p['streams'], p['context'], p['context'] // 2, out['B'], (p['context'] // 2 + p['context'] - 1) / 2, full['ppl_full']))
    trs = sorted(([r['spec'], '%.3fx' % (r['kv_bytes_mean'] / r['fp16_full_bytes_mean']), S.fmt_pct_ci(S.dppl_ci(r)),
                   '%.3f' % r['top1_agree']] for r in rows[1:]), key=lambda x: float(x[2].split('%')[0]))
    md.append(table(['spec', 'mean bytes vs fp16', 'Δppl [95% CI]', 'top-1'], [['`%s`' % t[0]] + t[1:] for t in trs]) + '\n')
    sel = [r for r in rows[1:] if '+fp16' in r['spec']]
    rnd = [r for r in sel if r['spec'].startswith('random')][0]
    best = min([r for r in sel if r is not rnd], key=S.dppl)
    md.append('- Best policy here (random aside), `%s`, against random eviction: %s.\n' % (
        best['spec'], S.compare_ppl(best, rnd, '`%s`' % best['spec'], 'random')))
    md.append('### Retrieval at compression ratio 0.5 (context %d, %d pass-key items per cell)\n' % (p['ruler_context'], p['ruler_items']))
    rr = out['ruler']
    fr = [r for r in rr if r['name'] == 'full'][0]
    md.append('Full cache: %s.\n' % S.fmt_prop_ci(S.wilson(fr['correct'], fr['items'])))
    md.append(table(['policy', 'compressed', 'score [95% CI]'],
                    [['`%s`' % r['name'], 'before the question' if r['mode'] == 'agnostic' else 'after', S.fmt_prop_ci(S.wilson(r['correct'], r['items']))]
                     for r in rr if r['name'] != 'full']) + '\n')
    rows_ = [dict(keep=0.5, name=r['name'], mode=r['mode'], task='single', spec=r['spec'], correct=r['correct'], items=r['items'])
             for r in rr if r['name'] != 'full']
    paper_rank, our_rank, moved, ours = report_ruler.ordering_vs_kvpress(md, rows_, table)
    md.append('- Ordering at 0.5, kvpress (Llama-3.1-8B, RULER-4k): %s; SmolLM2 here: %s. %s\n' % (
        ' > '.join(paper_rank), our_rank,
        ('Where our intervals reverse kvpress\'s order: %s.' % '; '.join(moved)) if moved else
        'No pair of presses is reversed with separated intervals.'))
    return win, sink
