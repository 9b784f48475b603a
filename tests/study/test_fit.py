"""The power-law fitter recovers known exponents from synthetic points, with honest errors."""

import numpy as np
import pytest

from flan_jax.study.fit import fit_power_law


@pytest.mark.parametrize("a,b,c,lo,hi", [(40.0, 0.28, 1.7, 5, 9),      # L(N), params
                                         (1e3, 0.155, 0.4, 14, 20),    # L(C), FLOPs
                                         (8.0, 0.6, 0.0, 3, 7)])       # no floor
def test_exact_points_give_back_their_law(a, b, c, lo, hi):
    x = np.logspace(lo, hi, 9)
    fit = fit_power_law(x, a * x ** -b + c)
    assert fit.b == pytest.approx(b, rel=1e-4)
    assert fit.a == pytest.approx(a, rel=1e-3)
    assert fit.c == pytest.approx(c, abs=1e-4 * (1 + c))
    assert fit.rel_rmse < 1e-6 and fit.points == 9
    assert fit(x[3]) == pytest.approx(a * x[3] ** -b + c, rel=1e-6)


def test_noisy_points_recover_the_exponent_within_its_reported_error():
    x = np.logspace(5, 9, 12)
    hits = []
    for seed in range(20):
        noise = np.exp(np.random.default_rng(seed).normal(0, 0.01, x.shape))  # 1% noise
        fit = fit_power_law(x, (40 * x ** -0.28 + 1.7) * noise)
        assert 0.002 < fit.rel_rmse < 0.02
        assert 0 < fit.b_err < 0.1
        hits.append(abs(fit.b - 0.28) <= 2 * fit.b_err)
    assert sum(hits) >= 15  # ~95% within 2 standard errors, if the errors are honest
    assert "N^(-0." in fit.describe("N")


@pytest.mark.parametrize("x,y,match", [([1, 2, 3], [3, 2, 1], "at least 4"),
                                       ([1, 2, 3, 0], [4, 3, 2, 1], "> 0"),
                                       ([1, 1, 2, 2], [4, 3, 2, 1], "3 distinct"),
                                       ([1, 2, 3, 4], [4, 3, 2], "equal 1-d")])
def test_bad_points_are_refused(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y)
