"""Series score from per-slice tumour probabilities in anatomical order.

A 2-D classifier with a 5 % per-slice false-positive rate finds one high slice in almost
every 150-slice series, so the maximum over slices ranks noise. A real lesion spans
adjacent slices (a 1 cm lesion covers two or more 5 mm slices; gliomas many more), so the
series score is the best mean over ``window`` adjacent slices: one stray slice at 0.99
among slices at 0.05 scores (0.99 + 0.05 + 0.05) / 3 = 0.36 with window 3, while three
adjacent slices at 0.9 score 0.9. A series shorter than the window scores its mean.
The key slice is the highest slice inside the best window.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeriesScore:
    score: float
    key_index: int  # position in the ordered slice list
    window_start: int
    window_stop: int  # exclusive


def adjacent_window_score(scores: Sequence[float], window: int) -> SeriesScore | None:
    """The best mean over ``min(window, len(scores))`` adjacent slices; ``None`` for no slices.

    Ties go to the first window in order, so the result does not depend on float noise
    in the comparison of equal windows.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return None
    width = min(window, values.size)
    sums = np.convolve(values, np.ones(width), mode="valid")
    start = int(np.argmax(sums))
    key = start + int(np.argmax(values[start : start + width]))
    return SeriesScore(float(sums[start] / width), key, start, start + width)
