"""Turn planned utterances (`Job`) into dataset rows: synthesize, warp/resample, level, noise, dither, FLAC.

Runs in the worker processes of a corpus build. Everything random about a row (noise, dither, where a keyword
sits in its clip) is drawn from a generator seeded by the job's own `seed`, so a row does not depend on which
worker rendered it or on what it rendered before.

Signal chain for one job:

1. the engine synthesizes at its native rate (`engines.synthesize`);
2. `torchaudio.functional.resample` from `native_rate * warp` to the corpus rate: 22.05 kHz espeak-ng and 32 kHz
   slt HTS become 16 kHz and the speaker's warp is applied in the same step (phone times scale by
   `native_rate / (native_rate * warp)`);
3. fixed-length clips (keyword spotting) are trimmed to the loud part and placed at a random offset;
4. gain to the speaker's level (RMS over frames within 30 dB of the loudest), optional coloured background noise
   at a signal-to-noise ratio, a peak limit of -0.2 dBFS;
5. dither: Gaussian noise of one 16-bit step (`DITHER`) on every sample, so the exact digital zero some engines
   emit as silence never reaches a log-spectrum;
6. 16-bit FLAC bytes (soundfile) for the dataset's `Audio` column.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .engines import Prosody, Voice, synthesize
from .phones import normalize_alignment

__all__ = ["DITHER", "Job", "colored_noise", "encode_flac", "render_task"]

DITHER = 1.0 / 32768  # one step of 16-bit PCM
_PEAK = 10 ** (-0.2 / 20)
_FRAME_SECONDS = 0.02
_ACTIVE_DB = 30.0  # frames within this many dB of the loudest count as speech
_TRIM_DB = 35.0  # keyword clips: keep from the first to the last frame within this many dB of the loudest
_TRIM_MARGIN_SECONDS = 0.03
_WARP_GRID_HZ = 50  # effective source rates are rounded to this grid so resampling kernels stay small


@dataclass(frozen=True)
class Job:
    """One planned row.

    Attributes:
        index: position in its split (rows are written in this order).
        voice: the engine voice, or `None` for a noise-only clip (`_silence_`).
        text: what the engine is given.
        prosody: engine controls for this utterance.
        warp: resampling warp (see `speakers.Speaker.warp`).
        level_db: speech level in dBFS (noise level for a noise-only clip).
        seed: seeds this row's noise, dither and placement.
        row: column values fixed at planning time (`id`, `file`, `text`, `speaker_id`, labels, ...).
        clip_seconds: if set, the output is exactly this long: speech trimmed and placed at a random offset.
        snr_db: if set, coloured background noise is added this many dB below the speech level.
        noise_beta: spectral slopes of the coloured noise (0 white, 1 pink, 2 brown, -1 blue, -2 violet), mixed.
        alignment: whether to add the `phone_alignment` column.
    """

    index: int
    voice: Voice | None
    text: str
    prosody: Prosody
    warp: float
    level_db: float
    seed: int
    row: dict = field(default_factory=dict)
    clip_seconds: float | None = None
    snr_db: float | None = None
    noise_beta: tuple[float, ...] = (0.0,)
    alignment: bool = False


def colored_noise(rng: np.random.Generator, num_samples: int, beta: float) -> np.ndarray:
    """Gaussian noise with power spectrum ∝ 1/f^beta, unit RMS, float32 of shape (num_samples,).

    beta: 0 white, 1 pink, 2 brown (red), -1 blue, -2 violet.
    """
    spectrum = np.fft.rfft(rng.standard_normal(num_samples))
    freqs = np.fft.rfftfreq(num_samples)
    freqs[0] = freqs[1] if num_samples > 1 else 1.0
    spectrum *= freqs ** (-beta / 2)
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, num_samples)
    return (noise / max(np.sqrt(np.mean(noise**2)), 1e-12)).astype(np.float32)


def _mixed_noise(rng: np.random.Generator, num_samples: int, betas: Sequence[float]) -> np.ndarray:
    weights = rng.dirichlet(np.ones(len(betas)))
    noise = sum(w * colored_noise(rng, num_samples, b) for w, b in zip(weights, betas))
    return (noise / max(np.sqrt(np.mean(noise**2)), 1e-12)).astype(np.float32)


def _frame_rms(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS of consecutive `frame`-sample frames (one frame if `x` is shorter)."""
    n = len(x) // frame
    frames = x[: n * frame].reshape(n, frame) if n else x[None, :]
    return np.sqrt(np.mean(frames**2, axis=1) + 1e-20)


def _speech_level(x: np.ndarray, frame: int) -> float:
    rms = _frame_rms(x, frame)
    active = rms[rms >= rms.max() * 10 ** (-_ACTIVE_DB / 20)]
    return float(np.sqrt(np.mean(active**2)))


def _trim(x: np.ndarray, frame: int, margin: int) -> np.ndarray:
    rms = _frame_rms(x, frame)
    loud = np.flatnonzero(rms >= rms.max() * 10 ** (-_TRIM_DB / 20))
    return x[max(0, loud[0] * frame - margin) : min(len(x), (loud[-1] + 1) * frame + margin)]


def encode_flac(waveform: np.ndarray, sampling_rate: int) -> bytes:
    """16-bit FLAC bytes of a float waveform in [-1, 1] of shape (samples,)."""
    pcm = np.clip(np.round(waveform * 32768), -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, sampling_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _resample(x: np.ndarray, native_rate: int, warp: float, sampling_rate: int) -> tuple[np.ndarray, float]:
    """Resample from `native_rate * warp` (on a 50 Hz grid) to `sampling_rate`; return the audio and the factor
    that maps engine seconds to output seconds."""
    source_rate = int(round(native_rate * warp / _WARP_GRID_HZ)) * _WARP_GRID_HZ
    if source_rate != sampling_rate:
        x = torchaudio.functional.resample(
            torch.from_numpy(np.ascontiguousarray(x)), source_rate, sampling_rate
        ).numpy()
    return x, native_rate / source_rate


def render_task(task: tuple[int, Sequence[Job]]) -> list[dict]:
    """Render jobs that share one voice (festival runs them in one process).

    Args:
        task: `(sampling_rate, jobs)`.

    Returns:
        One row per job: `job.row` plus `audio` (`{"bytes": FLAC, "path": row["file"]}`), `duration` (seconds)
        and, if `job.alignment`, `phone_alignment`.
    """
    sampling_rate, jobs = task
    voice = jobs[0].voice
    if any(job.voice != voice for job in jobs):
        raise ValueError("render_task: all jobs of a task must share one voice")
    synthesized = (
        synthesize(voice, [(job.text, job.prosody) for job in jobs]) if voice is not None else [None] * len(jobs)
    )
    frame = int(round(_FRAME_SECONDS * sampling_rate))
    rows = []
    for job, out in zip(jobs, synthesized):
        rng = np.random.default_rng(job.seed)
        alignment = None
        if out is None:  # noise-only clip
            num_samples = int(round(job.clip_seconds * sampling_rate))
            x = _mixed_noise(rng, num_samples, job.noise_beta) * 10 ** (job.level_db / 20)
        else:
            x, time_scale = _resample(out.waveform, out.sampling_rate, job.warp, sampling_rate)
            if job.clip_seconds is not None:
                num_samples = int(round(job.clip_seconds * sampling_rate))
                speech = _trim(x, frame, int(round(_TRIM_MARGIN_SECONDS * sampling_rate)))
                if len(speech) > num_samples:  # centre crop
                    start = (len(speech) - num_samples) // 2
                    speech = speech[start : start + num_samples]
                x = np.zeros(num_samples, np.float32)
                offset = int(rng.integers(0, num_samples - len(speech) + 1))
                x[offset : offset + len(speech)] = speech
            level = _speech_level(x, frame)
            x = x * (10 ** (job.level_db / 20) / max(level, 1e-9))
            if job.snr_db is not None:
                x = x + _mixed_noise(rng, len(x), job.noise_beta) * 10 ** ((job.level_db - job.snr_db) / 20)
            if job.alignment:
                alignment = normalize_alignment(
                    voice.engine, out.segments, len(x) / sampling_rate, time_scale=time_scale
                )
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if peak > _PEAK:
            x = x * (_PEAK / peak)
        x = (x + rng.normal(0.0, DITHER, len(x))).astype(np.float32)
        row = dict(job.row)
        row["audio"] = {"bytes": encode_flac(x, sampling_rate), "path": row.get("file")}
        row["duration"] = len(x) / sampling_rate
        if job.alignment:
            row["phone_alignment"] = alignment
        rows.append(row)
    return rows
