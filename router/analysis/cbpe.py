"""Expected accuracy without labels: confidence-based performance estimation (CBPE, as NannyML
does it) for calibrated probability predictions (pure; mergeable sums).

A calibrated score ``p`` is the probability that the label is positive. At the decision
threshold ``t`` the model predicts positive when ``p >= t``, and that decision is right with
probability ``q = p`` (predicted positive) or ``1 − p`` (predicted negative). The expected
accuracy over ``n`` predictions is ``mean(q)``, and the realised accuracy, a sum of independent
Bernoulli(q_i) over n (Poisson-binomial), has variance ``Σ q(1 − q) / n²``: the interval
``mean(q) ± z sqrt(Σ q(1−q)) / n`` holds the realised accuracy with probability ~1 − α *if the
scores are calibrated*. So the estimate is shown while labels are missing, and once labels
arrive the realised accuracy on the labelled predictions is set beside the expectation for those
same predictions: a realised accuracy outside that interval says the scores are not calibrated
(or the population moved), and the label-free estimate should not be trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CbpeSums:
    """Sums over one model's score predictions in [0, 1]: all of them, and those with a label."""

    n: int = 0
    q: float = 0.0  # Σ q, q = probability that the thresholded decision is right
    qv: float = 0.0  # Σ q (1 − q)
    n_lab: int = 0
    q_lab: float = 0.0
    qv_lab: float = 0.0
    correct_lab: int = 0

    def add(self, p: np.ndarray, labels: np.ndarray, threshold: float) -> None:
        """Scores ``p`` (NaN: none) and their labels (NaN: not labelled), aligned."""
        ok = (p >= 0) & (p <= 1)  # (False for NaN; ±inf are outside)
        if ok.all():
            pp, lab = p, labels
        elif ok.any():
            pp, lab = p[ok], labels[ok]
        else:
            return
        pos = pp >= threshold
        q = np.where(pos, pp, 1.0 - pp)
        qv = q * (1.0 - q)
        self.n += int(q.size)
        self.q += float(q.sum())
        self.qv += float(qv.sum())
        has = np.isfinite(lab)
        if has.any():
            sel = np.flatnonzero(has)  # (a take: a random boolean mask indexes ~3x slower)
            self.n_lab += int(sel.size)
            self.q_lab += float(q[sel].sum())
            self.qv_lab += float(qv[sel].sum())
            # right: predicted positive and labelled >= 0.5, or negative and below (NaN: neither)
            right = np.where(pos, lab >= 0.5, lab < 0.5) & has
            self.correct_lab += int(np.count_nonzero(right))

    def merge(self, o: CbpeSums) -> None:
        self.n += o.n
        self.q += o.q
        self.qv += o.qv
        self.n_lab += o.n_lab
        self.q_lab += o.q_lab
        self.qv_lab += o.qv_lab
        self.correct_lab += o.correct_lab
