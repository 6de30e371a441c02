"""Cohen's kappa (Cohen 1960) against values worked by hand."""

from __future__ import annotations

import pytest

from service.registry.agreement import cohens_kappa


def test_kappa_of_a_worked_example() -> None:
    # 10 pairs, 7 agree (p_o = 0.7); marginals a: 5 g / 5 n, b: 6 g / 4 n -> p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    first = ["g"] * 5 + ["n"] * 5
    second = ["g", "g", "g", "g", "n", "g", "g", "n", "n", "n"]
    assert cohens_kappa(first, second) == pytest.approx((0.7 - 0.5) / 0.5)


def test_kappa_edges() -> None:
    assert cohens_kappa([], []) is None
    assert cohens_kappa(["g", "g"], ["g", "g"]) == 1.0  # one label throughout: p_e = 1
    assert cohens_kappa(["g", "n"], ["n", "g"]) == pytest.approx(-1.0)
    assert cohens_kappa(["g", "n", "g", "n"], ["g", "n", "g", "n"]) == 1.0
