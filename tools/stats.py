"""The statistics of every report and check: spread over seeds, paired differences, Student's t.

For a metric x over the n seeds of one configuration:
    mean  m = (1/n) sum_i x_i
    SD    s = sqrt( sum_i (x_i - m)^2 / (n - 1) )              (sample standard deviation, n >= 2)
Two configurations A (the reference) and B, paired by seed over the n seeds both have:
    d_i = x_i(B) - x_i(A),  its mean d and sample SD s_d,
    95% interval  d -+ t(0.975, n - 1) * s_d / sqrt(n)          (Student's t, n >= 2)
A claim that B is better is "supported" when the interval excludes 0 on the better side,
"contradicted" when it excludes 0 on the other side, "not shown" when it contains 0 or n < 2.
Only the standard library: bench/gpu_check.py imports this before it knows what is installed.
"""
import math
import statistics
from collections import namedtuple
from functools import cache

Spread = namedtuple("Spread", "n mean sd")  # mean None when n = 0, sd None when n < 2
Paired = namedtuple("Paired", "n mean low high")  # mean None when n = 0, low/high None when n < 2


def t_cdf(t, df):
    """P(T <= t), T Student's t with an integer df >= 1: the closed form of Abramowitz and Stegun 26.7.3-4."""
    theta = math.atan(t / math.sqrt(df))
    c2, term, total = math.cos(theta) ** 2, 1.0, 1.0
    if df % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        for k in range(1, (df - 1) // 2):
            term *= c2 * 2 * k / (2 * k + 1)
            total += term
        inside = 2 / math.pi * (theta + (math.sin(theta) * math.cos(theta) * total if df > 1 else 0))
    else:  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = math.sin(theta) * total
    return 0.5 + inside / 2


@cache
def t_quantile(p, df):
    """q such that P(T <= q) = p, for 0.5 < p < 1: by bisection on t_cdf. t(0.975, 2) = 4.302653."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (low, middle) if t_cdf(middle, df) >= p else (middle, high)
    return (low + high) / 2


def spread(values):
    values = list(values)
    if not values:
        return Spread(0, None, None)
    return Spread(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)


def paired(reference, other, level=0.95):
    """other - reference over the seeds both {seed: value} hold: the mean difference and its t-interval."""
    d = [other[s] - reference[s] for s in sorted(set(reference) & set(other))]
    if len(d) < 2:
        return Paired(len(d), d[0] if d else None, None, None)
    mean = statistics.fmean(d)
    half = t_quantile((1 + level) / 2, len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d))
    return Paired(len(d), mean, mean - half, mean + half)


def verdict(p, better):
    """For a difference p whose good sign is `better` (+1 higher is better, -1 lower)."""
    if p.low is None:
        return "not shown"
    if p.low > 0 or p.high < 0:
        return "supported" if p.mean * better > 0 else "contradicted"
    return "not shown"
