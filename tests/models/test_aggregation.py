"""Series scores that one stray slice cannot dominate."""

from __future__ import annotations

import numpy as np
import pytest

from models.aggregation import adjacent_window_score


def test_one_stray_slice_among_150_normals_scores_low() -> None:
    scores = [0.05] * 150
    scores[70] = 0.99
    result = adjacent_window_score(scores, window=3)
    assert result is not None
    assert result.score == pytest.approx((0.99 + 0.05 + 0.05) / 3)
    assert result.key_index == 70


def test_a_run_of_adjacent_positives_outranks_a_stray_slice() -> None:
    lesion = [0.05] * 40
    lesion[20:23] = [0.7, 0.8, 0.75]
    stray = [0.05] * 150
    stray[3] = 0.99
    lesion_score = adjacent_window_score(lesion, 3)
    stray_score = adjacent_window_score(stray, 3)
    assert lesion_score is not None and stray_score is not None
    assert lesion_score.score == pytest.approx(0.75)
    assert (lesion_score.window_start, lesion_score.window_stop, lesion_score.key_index) == (20, 23, 21)
    assert lesion_score.score > stray_score.score


def test_positives_far_apart_are_not_a_run() -> None:
    scattered = [0.0] * 30
    scattered[2] = scattered[15] = scattered[28] = 0.9
    result = adjacent_window_score(scattered, 3)
    assert result is not None and result.score == pytest.approx(0.3)


def test_short_series_score_their_mean_and_empty_ones_nothing() -> None:
    result = adjacent_window_score([0.2, 0.6], window=3)
    assert result is not None and result.score == pytest.approx(0.4) and result.key_index == 1
    assert adjacent_window_score([], window=3) is None
    single = adjacent_window_score([0.8], window=3)
    assert single is not None and single.score == pytest.approx(0.8)


def test_ties_go_to_the_first_window_and_window_one_is_the_maximum() -> None:
    result = adjacent_window_score([0.5, 0.5, 0.5, 0.5], window=2)
    assert result is not None and (result.window_start, result.key_index) == (0, 0)
    rng = np.random.default_rng(3)
    values = rng.random(50).tolist()
    maximum = adjacent_window_score(values, window=1)
    assert maximum is not None and maximum.score == pytest.approx(max(values))
    with pytest.raises(ValueError, match="window must be at least 1"):
        adjacent_window_score(values, window=0)
