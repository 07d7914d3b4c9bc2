#!/usr/bin/env python3
"""Paired-round ratio of two benchmark targets, with a distribution-free confidence interval.

    bench/paired.py [--digits=N] LABEL TARGET "a1 a2 ..." "b1 b2 ..." [lower]

a_i and b_i are the two targets' figures of round i (measured one after the other, so both saw
the same machine). Prints one markdown line: every round's a_i/b_i, the median ratio, the
confidence interval of that median from the sign test (order statistics of the ratios; no
assumption on how the noise is distributed), and the verdict against TARGET (higher is better
unless the last argument is `lower`; ratios printed with 2 decimals, or N):

- met: the whole interval is at or above TARGET (at or below it when lower is better);
- not met: the whole interval is below TARGET (above, when lower is better);
- undecided: the interval contains TARGET, more rounds are needed to tell.

Why paired ratios: on a shared VM the machine's speed drifts by 1.5-2x from minute to minute,
so one target's median over the run and another's can differ by more than the targets do. Two
measurements taken back to back see nearly the same machine; their ratio cancels the drift.
"""

import math
import statistics
import sys


def sign_test_interval(values, confidence=0.95):
    """(low, high, coverage): the narrowest order-statistic pair whose coverage is >= confidence."""
    xs = sorted(values)
    n = len(xs)
    # P(X <= j) for X ~ Binomial(n, 1/2).
    cdf, total = [], 0.0
    for j in range(n + 1):
        total += math.comb(n, j) / 2**n
        cdf.append(total)
    alpha = (1 - confidence) / 2
    # [x_(c+1), x_(n-c)] (1-based) misses the median with probability 2 P(X <= c): cut as many
    # from each end as keeps that within 1 - confidence. Below 6 rounds even the whole range
    # [min, max] covers less than 95%; the coverage printed says so.
    c = 0
    while c + 1 < n - c - 1 and cdf[c + 1] <= alpha:
        c += 1
    return xs[c], xs[n - 1 - c], 1 - 2 * cdf[c]


def main(argv):
    digits = 2
    if len(argv) > 1 and argv[1].startswith("--digits="):
        digits = int(argv[1].split("=", 1)[1])
        argv = argv[:1] + argv[2:]
    if len(argv) not in (5, 6):
        sys.exit(__doc__)
    label, target = argv[1], float(argv[2])
    a = [float(v) for v in argv[3].split()]
    b = [float(v) for v in argv[4].split()]
    higher_is_better = len(argv) < 6 or argv[5] != "lower"
    if not a or len(a) != len(b) or any(v <= 0 for v in b):
        sys.exit(f"paired.py: {label}: need as many positive figures in both lists ({len(a)} vs {len(b)})")
    ratios = [x / y for x, y in zip(a, b)]
    med = statistics.median(ratios)
    low, high, coverage = sign_test_interval(ratios)
    if higher_is_better:
        verdict = "met" if low >= target else "not met" if high < target else "undecided"
        want = f">= {target:g}x"
    else:
        verdict = "met" if high <= target else "not met" if low > target else "undecided"
        want = f"<= {target:g}x"
    d = digits
    rounds = " ".join(f"{r:.{d}f}" for r in ratios)
    few = "" if coverage >= 0.95 else " (too few rounds for a 95% interval: 6 or more needed)"
    print(
        f"- {label}, paired by round: median **{med:.{d}f}x**, {coverage:.0%} interval "
        f"[{low:.{d}f}, {high:.{d}f}] over {len(ratios)} rounds ({rounds}); target {want}: "
        f"**{verdict}**{few}"
    )


if __name__ == "__main__":
    main(sys.argv)
