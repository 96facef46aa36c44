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


SMALL_N = 20  # below this many streams the percentile bootstrap under-covers: a t interval instead
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093]  # two-sided 95% Student t, 1..19 degrees of freedom


def _mean_interval(d):
    """(low, high) for the mean of d: the percentile bootstrap, or with fewer than SMALL_N values a t interval."""
    n = len(d)
    if n < SMALL_N:
        if n < 2:
            return d[0], d[0]
        m = sum(d) / n
        sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
        h = T975[n - 2] * sd / math.sqrt(n)
        return m - h, m + h
    return _interval([sum(d[i] for i in idx) / n for idx in _resamples(n)])


def dppl_ci(r):
    """(estimate, low, high) of dppl: an interval for the mean per-stream NLL difference (a percentile bootstrap
    over streams, which keeps the dependence between the tokens of a stream; a t interval under SMALL_N streams),
    mapped through exp(.) - 1."""
    per = _tokens_per_stream(r)
    d = [(x - y) / per for x, y in zip(r['stream_nll'], r['stream_nll_full'])]
    lo, hi = _mean_interval(d)
    return dppl(r), math.exp(lo) - 1.0, math.exp(hi) - 1.0


def kl_ci(r):
    per = _tokens_per_stream(r)
    lo, hi = _mean_interval([k / per for k in r['stream_kl']])
    return sum(r['stream_kl']) / r['tokens'], max(0.0, lo), hi


def top1_ci(r):
    per = _tokens_per_stream(r)
    lo, hi = _mean_interval([g / per for g in r['stream_agree']])
    return sum(r['stream_agree']) / r['tokens'], max(0.0, lo), min(1.0, hi)


def paired_diff_ci(a, b):
    """Mean NLL per token through spec a minus through spec b, paired over the same streams: (estimate, low,
    high) in nats. Negative: a predicts better."""
    if a['streams'] != b['streams'] or a['tokens'] != b['tokens']:
        raise ValueError('paired comparison needs the same streams: %s vs %s' % (a['spec'], b['spec']))
    per = _tokens_per_stream(a)
    d = [(x - y) / per for x, y in zip(a['stream_nll'], b['stream_nll'])]
    lo, hi = _mean_interval(d)
    return sum(d) / len(d), lo, hi


def mean_ci(values):
    """(mean, low, high) of the mean of independent values (e.g. one per prompt or seed): a percentile bootstrap, or
    a t interval below 20 values (_mean_interval)."""
    lo, hi = _mean_interval(list(values))
    return sum(values) / len(values), lo, hi


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
