"""Which sources vary, and how: flux multipliers per epoch for the forced photometry.

About 4 % of the measured sources vary, each by one model: interstellar scintillation (independent
scatter per epoch), a damped random walk (correlated over `tau` days), or an extreme scattering event
(a dip with caustic brightenings on either side). Only sources bright enough for the variations to
show (>= 25 mJy) are chosen.
"""

from __future__ import annotations

import math
import random

from .catalog import CatalogSource, VariabilityModel

VARIABLE_FRACTION = 0.035
_MIN_VARIABLE_FLUX_MJY = 25.0
_MODELS: tuple[VariabilityModel, ...] = ("scintillation", "walk", "ese")


def choose_variables(rng: random.Random, measured: list[CatalogSource]) -> None:
    """Give some of the measured sources (the calibrator, first, excepted) a variability model."""
    count = len(measured) - 1
    bright = [s for s in measured[1:] if s.flux_mjy >= _MIN_VARIABLE_FLUX_MJY]
    for n, src in enumerate(rng.sample(bright, min(len(bright), max(3, round(VARIABLE_FRACTION * count))))):
        src.model = _MODELS[n % 3]
        if src.model == "scintillation":
            src.params = (rng.uniform(0.12, 0.3),)  # modulation index
        elif src.model == "walk":
            src.params = (rng.uniform(0.15, 0.35), rng.uniform(0.05, 5.0))  # stationary std, days
        else:
            src.params = (rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.2), rng.random())  # depth, width, centre


def flux_multipliers(rng: random.Random, src: CatalogSource, mjds: list[float]) -> list[float] | None:
    """Flux multipliers per epoch for a variable source; None for a steady one."""
    if src.model in ("", "calibrator"):
        return None
    if src.model == "scintillation":
        (m,) = src.params
        return [max(0.05, 1.0 + m * rng.gauss(0.0, 1.0)) for _ in mjds]
    if src.model == "walk":
        return _random_walk(rng, src.params, mjds)
    return _scattering_event(src.params, mjds)


def _random_walk(rng: random.Random, params: tuple[float, ...], mjds: list[float]) -> list[float]:
    """A log-normal damped random walk (Ornstein-Uhlenbeck in log flux) with mean multiplier 1."""
    std, tau = params
    x, last, out = rng.gauss(0.0, std), mjds[0], []
    for t in mjds:
        decay = math.exp(-(t - last) / tau)
        x = x * decay + std * math.sqrt(1.0 - decay * decay) * rng.gauss(0.0, 1.0)
        last = t
        out.append(math.exp(x - std * std / 2.0))
    return out


def _scattering_event(params: tuple[float, ...], mjds: list[float]) -> list[float]:
    """An extreme scattering event, placed inside the span this source was observed so that every
    database shows some."""
    depth, width, where = params
    span = mjds[-1] - mjds[0]
    centre = mjds[0] + where * span
    sigma = max(width * span, 0.004)
    out = []
    for t in mjds:
        x = (t - centre) / sigma
        caustic = math.exp(-0.5 * ((abs(x) - 1.8) / 0.4) ** 2)
        out.append(1.0 - depth * math.exp(-0.5 * x * x) + 0.35 * depth * caustic)
    return out
