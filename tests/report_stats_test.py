"""Checks scripts/report_stats.py against independent references: Wilson intervals against published values
(Newcombe 1998, Table I), the bootstrap against the spread it must show, and the interval rule on cases where the
answer is known. Run by tests/test_report.c (report/stats_checks); standard library only."""
import math
import os
import random
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'scripts'))
import report_stats as S  # noqa: E402


def stream_row(spec, nll, nll_full, per=64):
    n = len(nll)
    return dict(spec=spec, streams=n, tokens=n * per, stream_nll=nll, stream_nll_full=nll_full,
                stream_kl=[0.01 * per] * n, stream_agree=[per - 1] * n)


class Wilson(unittest.TestCase):
    def test_published_values(self):
        # Newcombe (1998), Table I, method 3 (score): 81/263 -> 0.2553..0.3662; 15/148 -> 0.0624..0.1605;
        # 0/20 -> 0.0000..0.1611; 1/29 -> 0.0061..0.1718
        for k, n, lo, hi in ((81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)):
            p, a, b = S.wilson(k, n)
            self.assertAlmostEqual(p, k / n)
            self.assertAlmostEqual(a, lo, places=4)
            self.assertAlmostEqual(b, hi, places=4)

    def test_separation_rule(self):
        self.assertIn('indistinguishable', S.compare_counts(50, 100, 55, 100, 'a', 'b'))
        self.assertIn('a 0.90', S.compare_counts(90, 100, 20, 100, 'a', 'b').split('is above')[0])


class Bootstrap(unittest.TestCase):
    def test_estimate_and_interval(self):
        rng = random.Random(1)
        full = [64 * 1.5 + rng.gauss(0, 3) for _ in range(64)]
        comp = [f + 64 * 0.05 + rng.gauss(0, 1) for f in full]  # +0.05 nats/token on average
        r = stream_row('x', comp, full)
        est, lo, hi = S.dppl_ci(r)
        self.assertAlmostEqual(est, math.exp((sum(comp) - sum(full)) / r['tokens']) - 1)
        self.assertTrue(lo < est < hi)
        self.assertTrue(lo > 0.03 and hi < 0.08, (lo, hi))  # exp(0.05)-1 = 0.051, spread 1/64 nats per stream
        # no difference at all: a degenerate interval at 0
        self.assertEqual(S.dppl_ci(stream_row('y', full, full)), (0.0, 0.0, 0.0))

    def test_few_streams_take_a_t_interval(self):
        # 5 streams, per-token differences 1..5: mean 3, sd 1.5811, t(4) = 2.776 -> 3 -/+ 1.9630
        r = stream_row('t', [1.0, 2.0, 3.0, 4.0, 5.0], [0.0] * 5, per=1)
        est, lo, hi = S.dppl_ci(r)
        self.assertAlmostEqual(est, math.exp(3.0) - 1)
        self.assertAlmostEqual(math.log1p(lo), 3.0 - 1.96297, places=4)
        self.assertAlmostEqual(math.log1p(hi), 3.0 + 1.96297, places=4)

    def test_paired_rule(self):
        rng = random.Random(2)
        base = [64 * 1.5 + rng.gauss(0, 5) for _ in range(64)]  # streams differ a lot; the specs little
        a = stream_row('a', [b + 64 * 0.01 + rng.gauss(0, 0.2) for b in base], base)
        b = stream_row('b', [b + 64 * 0.02 + rng.gauss(0, 0.2) for b in base], base)
        c = stream_row('c', [x + rng.gauss(0, 0.2) for x in a['stream_nll']], base)
        self.assertIn('`a` beats `b`', S.compare_ppl(a, b, '`a`', '`b`'))
        self.assertIn('`a` beats `b`', S.compare_ppl(b, a, '`b`', '`a`'))
        self.assertIn('indistinguishable', S.compare_ppl(a, c, '`a`', '`c`'))
        with self.assertRaises(ValueError):
            S.paired_diff_ci(a, stream_row('d', base[:32], base[:32]))


if __name__ == '__main__':
    unittest.main()
