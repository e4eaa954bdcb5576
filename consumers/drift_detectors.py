"""Streaming tests of a model's conformal p-values: has the line moved away from what the
model was calibrated on?

While frames are exchangeable with the model's held-out OK images, their p-values
(:func:`engine.conformal.p_value`) are uniform on ``(0, 1]`` (a little larger, in fact: the
held-out images are folded into the memory bank after calibration, which can only lower a
frame's score). A shift of the line (lighting, focus, a new surface finish) raises scores,
which pushes p-values down. Both detectors here are fed every scored frame's p-value, OK
and NG alike: a shift that turns every frame NG must still be seen.

Each detector has a start and an end (one shift, one alarm; a return to normal ends it):

- :class:`AdwinDetector` (the default, ``BDI_DRIFT=adwin``): ``river``'s ADWIN (Bifet &
  Gavaldà 2007) on the p-values. It keeps a window whose mean is constant and cuts it where
  two sub-windows' means differ by more than a Hoeffding-type bound at confidence
  ``delta``. A cut that lowers the mean starts a drift. So does a window whose mean is
  below 1/2 by more than a Hoeffding bound (:meth:`AdwinDetector.below_uniform`): a cut
  needs a change inside the stream, and a consumer that starts on a line that has already
  moved sees none. The window's mean back within
  :data:`END_MARGIN` of ``min(0.5, the mean before the drift)`` (over at least
  :data:`MIN_WIDTH` frames) ends it.
- :class:`MartingaleDetector` (``BDI_DRIFT=martingale``): a CUSUM conformal test martingale
  (Vovk et al., "Retrain or not retrain: conformal test martingales for change-point
  detection", 2021): ``log S_t = max(0, log S_(t-1) + log f(p_t))`` with the power-mixture
  betting function ``f(p) = mean_e e p^(e-1)``; alarm at ``S >= level``, end when ``S``
  falls back to 1 (capped at ``level**2`` meanwhile, so that an end comes within a bounded
  number of normal frames).

docs/DRIFT.md has the measurements that chose the default.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

Change = Literal["started", "ended"]
STARTED: Change = "started"
ENDED: Change = "ended"
# a drift ends when the p-values' mean is back within this of min(0.5, its mean before)
END_MARGIN = 0.1
# how far one calibration's mean p-value may sit below 1/2 by the luck of its sample
CALIBRATION_SIGMAS = 4.0
MIN_WIDTH = 32  # frames in ADWIN's window before its mean may end (or start) a drift
DEFAULT_DELTA = 0.002  # river's default: about one false cut per 10^5 frames measured
MARTINGALE_LEVEL = 1e4  # alarm when the CUSUM martingale has grown 10,000-fold
_BETS = tuple(k / 10 for k in range(1, 10))  # the power mixture's exponents e


class DriftDetector(Protocol):
    name: str
    in_drift: bool

    @property
    def statistic(self) -> float:
        """The number the gauge shows (ADWIN: the window's mean p-value; martingale: log10 S)."""
        ...

    def update(self, p_value: float) -> Change | None:
        """Feed one frame's p-value; ``started`` / ``ended`` when the drift state flips."""
        ...


class AdwinDetector:
    name = "adwin"

    def __init__(self, delta: float = DEFAULT_DELTA) -> None:
        from river.drift import ADWIN  # imported once a model is monitored, not at start

        self.delta = delta
        self._adwin = ADWIN(delta=delta)
        self.in_drift = False
        self._before = 0.5  # the window's mean when the drift started
        self._frames = 0
        self._min_p = 1.0  # the smallest p-value seen: 1 / (n + 1) at the least

    @property
    def statistic(self) -> float:
        return float(self._adwin.estimation)

    def below_uniform(self) -> bool:
        """The window's mean p-value is below 1/2 beyond chance. While the line matches
        calibration the p-values are (super-)uniform on [0, 1] over calibrations, mean
        >= 1/2. Given one calibration of ``n`` scores their mean is
        ``(1 + Σ F(s_i)) / (n + 1)``: a mean of ``n`` uniforms, off 1/2 by
        :data:`CALIBRATION_SIGMAS` standard deviations ``sqrt(1 / 12n)`` at most (``n`` as
        the smallest p-value seen tells it, ``1 / (n + 1)``: never more than the truth, so
        the margin errs wide). Around that, by Hoeffding, a window of ``w`` p-values falls
        ``ε`` below with probability at most ``exp(-2 w ε²)``; with
        ``ε = sqrt(ln(t² / δ) / (2 w))`` at frame ``t``, summed over every frame checked,
        below ``δ · π²/6``."""
        width = self._adwin.width
        if width < MIN_WIDTH:
            return False
        n = max(1, round(1.0 / self._min_p) - 1)
        margin = CALIBRATION_SIGMAS * math.sqrt(1.0 / (12.0 * n))
        eps = math.sqrt(math.log(self._frames**2 / self.delta) / (2.0 * width))
        return float(self._adwin.estimation) < 0.5 - margin - eps

    def update(self, p_value: float) -> Change | None:
        before = float(self._adwin.estimation) if self._adwin.width else 0.5
        self._adwin.update(float(p_value))
        self._frames += 1
        self._min_p = min(self._min_p, max(float(p_value), 1e-9))
        after = float(self._adwin.estimation)
        if not self.in_drift:
            if self._adwin.drift_detected and after < before:
                self.in_drift, self._before = True, before
                return STARTED
            if self.below_uniform():
                self.in_drift, self._before = True, 0.5
                return STARTED
        # the mean recovers by a cut or, where ADWIN kept only a few drifted frames, bit by
        # bit as normal ones fill its window
        elif self._adwin.width >= MIN_WIDTH and after >= min(0.5, self._before) - END_MARGIN:
            self.in_drift = False
            return ENDED
        return None


class MartingaleDetector:
    name = "martingale"

    def __init__(self, level: float = MARTINGALE_LEVEL) -> None:
        self.level = level
        self._h = math.log(level)
        self.log_s = 0.0
        self.in_drift = False

    @property
    def statistic(self) -> float:
        return self.log_s / math.log(10.0)

    def update(self, p_value: float) -> Change | None:
        p = min(1.0, max(float(p_value), 1e-12))
        bet = sum(e * p ** (e - 1.0) for e in _BETS) / len(_BETS)
        self.log_s = max(0.0, self.log_s + math.log(bet))
        if self.in_drift:
            self.log_s = min(self.log_s, 2.0 * self._h)
            if self.log_s <= 0.0:
                self.in_drift = False
                return ENDED
        elif self.log_s >= self._h:
            self.in_drift = True
            return STARTED
        return None


def make_detector(name: str, delta: float = DEFAULT_DELTA) -> DriftDetector:
    """``adwin`` or ``martingale`` (``BDI_DRIFT``)."""
    if name == "adwin":
        return AdwinDetector(delta)
    if name == "martingale":
        return MartingaleDetector()
    raise ValueError(f"unknown drift detector {name!r}: adwin or martingale")
