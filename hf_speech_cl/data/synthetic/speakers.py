"""Synthetic speakers: an engine voice plus its own rate, pitch, pitch range, word gap, vocal-tract warp and level.

The voice catalogue (`VOICES`):

- espeak-ng: 8 English accents × 15 voice variants (`+m1`..`+m7`, `+f1`..`+f4`, `+klatt`..`+klatt4`); every
  espeak-ng speaker of a corpus uses a different accent+variant pair.
- flite: `awb` (Scottish male), `rms` (US male), `slt` (US female), `kal16` (US male, diphone).
- festival: `kal_diphone`, `ked_diphone` (US male diphone voices), `cmu_us_slt_arctic_hts` (US female HTS).

flite and festival have few voices, so several speakers share one; they differ by the settings below. The `warp`
resamples the engine's output as if it had been recorded at `warp` times its rate, which scales pitch and formants
by `warp` and duration by `1 / warp`: a cheap stand-in for vocal-tract-length differences (compare VTLP, Jaitly &
Hinton 2013, "Vocal Tract Length Perturbation (VTLP) improves speech recognition", ICML workshop).

Nominal F0 of the flite and festival voices (`Voice.f0_mean`, `Voice.f0_std`) were measured with an
autocorrelation pitch tracker on the Harvard sentences (flite) or read from the voice definitions (festival
`int_lr_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .engines import ENGINES, Prosody, Voice

__all__ = [
    "ENGINE_WEIGHTS",
    "ESPEAK_ACCENTS",
    "ESPEAK_VARIANTS",
    "VOICES",
    "Speaker",
    "SpeakerSampler",
    "allocate",
]

ESPEAK_ACCENTS = (
    "en-us", "en", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
ESPEAK_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt2", "klatt3", "klatt4",
)  # fmt: skip
VOICES: dict[str, tuple[Voice, ...]] = {
    "espeak-ng": tuple(Voice("espeak-ng", f"{a}+{v}") for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS),
    "flite": (
        Voice("flite", "awb", f0_mean=123.0, f0_std=25.0),
        Voice("flite", "rms", f0_mean=103.0, f0_std=14.0, pitch_control=False),
        Voice("flite", "slt", f0_mean=168.0, f0_std=20.0),
        Voice("flite", "kal16", f0_mean=95.0, f0_std=12.0),
    ),
    "festival": (
        Voice("festival", "kal_diphone", f0_mean=105.0, f0_std=14.0),
        Voice("festival", "ked_diphone", f0_mean=105.0, f0_std=15.0),
        Voice("festival", "cmu_us_slt_arctic_hts", f0_mean=165.0, f0_std=34.0, pitch_control=False),
    ),
}
# Share of speakers per engine (renormalised over the engines asked for). espeak-ng is the most varied and
# cheapest; flite and festival the most speech-like.
ENGINE_WEIGHTS = {"espeak-ng": 0.4, "flite": 0.35, "festival": 0.25}


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker.

    Attributes:
        speaker_id: unique integer id within a corpus.
        voice: the engine voice.
        rate: speaking-rate factor given to the engine (> 1 faster).
        pitch_semitones: mean-F0 shift from the voice's nominal F0 (where the engine supports it).
        pitch_range: factor on F0 excursions.
        word_gap: extra pause between words, units of 10 ms (espeak-ng only).
        warp: resampling factor after synthesis: pitch and formants × `warp`, duration × `1 / warp`.
        level_db: speech level in dB relative to full scale (RMS of the loud frames).
    """

    speaker_id: int
    voice: Voice
    rate: float
    pitch_semitones: float
    pitch_range: float
    word_gap: int
    warp: float
    level_db: float

    def prosody(self, rate: float = 1.0, pitch_semitones: float = 0.0, pitch_range: float = 1.0) -> Prosody:
        """Engine controls for one utterance: the speaker's settings times / plus the given offsets."""
        return Prosody(
            rate=self.rate * rate,
            pitch_semitones=self.pitch_semitones + pitch_semitones,
            pitch_range=self.pitch_range * pitch_range,
            word_gap=self.word_gap,
        )


def allocate(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` into integer parts proportional to `weights` (largest remainder), each part >= 1 when
    `total >= len(weights)`."""
    weights = np.asarray(weights, dtype=float)
    if total <= 0:
        return [0] * len(weights)
    exact = total * weights / weights.sum()
    parts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - parts), kind="stable")[: total - parts.sum()]:
        parts[k] += 1
    if total >= len(weights):
        for k in np.flatnonzero(parts == 0):  # take from the largest part
            parts[np.argmax(parts)] -= 1
            parts[k] += 1
    return parts.tolist()


class SpeakerSampler:
    """Draws distinct speakers for one corpus.

    Args:
        rng: the corpus' random generator (all draws come from it, so a seed fixes every speaker).
        engines: engines to draw voices from (a subset of `ENGINES`).
        require_pitch_control: only voices whose engine honours pitch requests (the prosody corpus).
        rate_range: uniform range of the speaking-rate factor.
        pitch_range_semitones: uniform range of the mean-F0 shift.
        warp_range: uniform range of the resampling warp.
        level_range_db: uniform range of the speech level (dBFS).

    Raises:
        ValueError: for unknown engines or an empty voice list.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        engines: Sequence[str] = ENGINES,
        *,
        require_pitch_control: bool = False,
        rate_range: tuple[float, float] = (0.85, 1.2),
        pitch_range_semitones: tuple[float, float] = (-3.0, 3.0),
        warp_range: tuple[float, float] = (0.9, 1.1),
        level_range_db: tuple[float, float] = (-28.0, -18.0),
    ):
        unknown = [e for e in engines if e not in ENGINES]
        if unknown or not engines:
            raise ValueError(f"engines must be a non-empty subset of {ENGINES}, got {tuple(engines)}")
        self.rng = rng
        self.engines = tuple(dict.fromkeys(engines))
        self.voices = {e: [v for v in VOICES[e] if v.pitch_control or not require_pitch_control] for e in self.engines}
        self.rate_range, self.pitch_range_semitones = rate_range, pitch_range_semitones
        self.warp_range, self.level_range_db = warp_range, level_range_db
        self._unused_espeak = list(rng.permutation(len(self.voices.get("espeak-ng", []))))
        self._cycles: dict[str, list[int]] = {}
        self._ids: set[int] = set()

    def _voice(self, engine: str) -> Voice:
        voices = self.voices[engine]
        if engine == "espeak-ng" and self._unused_espeak:  # each accent+variant at most once while they last
            return voices[self._unused_espeak.pop()]
        cycle = self._cycles.setdefault(engine, [])
        if not cycle:
            cycle.extend(self.rng.permutation(len(voices)).tolist())
        return voices[cycle.pop()]

    def _new_id(self) -> int:
        while True:
            candidate = int(self.rng.integers(100, 10_000))
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def sample(self, count: int) -> list[Speaker]:
        """`count` new speakers, engines in proportion to `ENGINE_WEIGHTS` (every engine at least once when
        `count >= len(engines)`)."""
        counts = allocate(count, [ENGINE_WEIGHTS[e] for e in self.engines])
        speakers = []
        for engine, n in zip(self.engines, counts):
            for _ in range(n):
                u = lambda lo_hi: float(self.rng.uniform(*lo_hi))  # noqa: E731
                speakers.append(
                    Speaker(
                        speaker_id=self._new_id(),
                        voice=self._voice(engine),
                        rate=round(u(self.rate_range), 3),
                        pitch_semitones=round(u(self.pitch_range_semitones), 2),
                        pitch_range=round(u((0.7, 1.4)), 3),
                        word_gap=int(self.rng.integers(0, 3)) if engine == "espeak-ng" else 0,
                        warp=round(u(self.warp_range), 3),
                        level_db=round(u(self.level_range_db), 2),
                    )
                )
        return speakers
