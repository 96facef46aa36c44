"""Intervals for the report (scripts/report.py): a bootstrap over streams for the streaming eval's perplexity,
KL and top-1 agreement, Wilson intervals for recall and retrieval counts, and the rule that decides whether the
report may say "A beats B". Standard library only (CI has no numpy).

The streaming eval (build/infer kv --json) reports, per stream, the summed NLL through the cache under test and
through the full cache, the summed KL and the count of tokens whose top-1 agree (stream_nll, stream_nll_full,
stream_kl, stream_agree); every stream scores the same number of tokens. Evaluations of different specs on one
model take the same streams (evenly spaced offsets), so two specs are compared paired, stream by stream.
"""
import math
import random

BOOT = 2000  # resamples
SEED = 12345  # fixed: the report's intervals repeat exactly


def _tokens_per_stream(r):
    return r['tokens'] / r['streams']


def _resamples(n, seed=SEED):
    rng = random.Random(seed)
    for _ in range(BOOT):
        yield [rng.randrange(n) for _ in range(n)]


def _interval(values):
    v = sorted(values)
    return v[int(0.025 * (len(v) - 1))], v[int(math.ceil(0.975 * (len(v) - 1)))]


def dppl(r):
    """Perplexity through the cache against the full cache, as a fraction (0.05 = +5%), from the per-stream sums."""
    return math.exp((sum(r['stream_nll']) - sum(r['stream_nll_full'])) / r['tokens']) - 1.0


def dppl_ci(r):
    """(estimate, low, high) of dppl: a percentile bootstrap over streams (resampling whole streams keeps the
    dependence between the tokens of a stream)."""
    n, per = r['streams'], _tokens_per_stream(r)
    a, b = r['stream_nll'], r['stream_nll_full']
    boots = [math.exp(sum(a[i] - b[i] for i in idx) / (n * per)) - 1.0 for idx in _resamples(n)]
    lo, hi = _interval(boots)
    return dppl(r), lo, hi


def kl_ci(r):
    n, per = r['streams'], _tokens_per_stream(r)
    k = r['stream_kl']
    lo, hi = _interval([sum(k[i] for i in idx) / (n * per) for idx in _resamples(n)])
    return sum(k) / r['tokens'], lo, hi


def top1_ci(r):
    n, per = r['streams'], _tokens_per_stream(r)
    g = r['stream_agree']
    lo, hi = _interval([sum(g[i] for i in idx) / (n * per) for idx in _resamples(n)])
    return sum(g) / r['tokens'], lo, hi


def paired_diff_ci(a, b):
    """Mean NLL per token through spec a minus through spec b, paired over the same streams: (estimate, low,
    high) in nats. Negative: a predicts better."""
    if a['streams'] != b['streams'] or a['tokens'] != b['tokens']:
        raise ValueError('paired comparison needs the same streams: %s vs %s' % (a['spec'], b['spec']))
    n, per = a['streams'], _tokens_per_stream(a)
    d = [x - y for x, y in zip(a['stream_nll'], b['stream_nll'])]
    lo, hi = _interval([sum(d[i] for i in idx) / (n * per) for idx in _resamples(n)])
    return sum(d) / a['tokens'], lo, hi


def mean_ci(values):
    """(mean, low, high): a percentile bootstrap of the mean of independent values (e.g. one per prompt)."""
    n = len(values)
    lo, hi = _interval([sum(values[i] for i in idx) / n for idx in _resamples(n)])
    return sum(values) / n, lo, hi


def wilson(k, n, z=1.96):
    """Wilson score interval of a proportion k/n: (estimate, low, high)."""
    if n <= 0:
        return float('nan'), 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return p, max(0.0, mid - half), min(1.0, mid + half)


def separated(ci_a, ci_b):
    """Whether two (estimate, low, high) intervals do not overlap."""
    return ci_a[2] < ci_b[1] or ci_b[2] < ci_a[1]


def compare_ppl(a, b, name_a, name_b):
    """A sentence on a vs b under the interval rule: 'A beats B' only where the paired interval excludes 0."""
    est, lo, hi = paired_diff_ci(a, b)
    if hi < 0:
        return '%s beats %s (paired ΔNLL %.4f nats/token, 95%% CI [%.4f, %.4f])' % (name_a, name_b, est, lo, hi)
    if lo > 0:
        return '%s beats %s (paired ΔNLL %.4f nats/token, 95%% CI [%.4f, %.4f])' % (name_b, name_a, -est, -hi, -lo)
    return '%s and %s are indistinguishable (paired ΔNLL %.4f nats/token, 95%% CI [%.4f, %.4f] holds 0)' % (
        name_a, name_b, est, lo, hi)


def compare_counts(ka, na, kb, nb, name_a, name_b, what='recall'):
    """The same rule for two proportions (Wilson intervals)."""
    a, b = wilson(ka, na), wilson(kb, nb)
    fmt = '%s %.2f [%.2f, %.2f]'
    sa, sb = fmt % ((name_a,) + a), fmt % ((name_b,) + b)
    if separated(a, b):
        hi, lo = (sa, sb) if a[0] > b[0] else (sb, sa)
        return '%s: %s is above %s' % (what, hi, lo)
    return '%s: %s and %s are indistinguishable (the intervals overlap)' % (what, sa, sb)


def fmt_pct_ci(ci):
    est, lo, hi = ci
    return '%+.2f%% [%+.2f, %+.2f]' % (100 * est, 100 * lo, 100 * hi)


def fmt_prop_ci(ci):
    est, lo, hi = ci
    return '%.2f [%.2f, %.2f]' % (est, lo, hi)
