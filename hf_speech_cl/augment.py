"""Batched waveform augmentations that make the two SimCLR views of every clip.

Chen et al. 2020 (SimCLR) learn invariance to the augmentations that separate two views of the same example; for
speech we use the time-domain augmentations of the SimCLR-for-audio literature (additive noise, speed
perturbation, time masking, frequency masking — CLAR, Al-Tahan & Mohsenzadeh 2021; WavAugment, Kharitonov et al.
2021) plus gain. Each one is a documented function on a zero-padded batch `(B, T)` with valid lengths `(B,)`, whose
random parameters are arguments, so it can be tested on its own; [`SimCLRAugment`] draws the parameters from one
`torch.Generator` (reproducible under a seed) and builds the `(2N, T')` batch the model expects (view 1 of clip k
in row k, view 2 in row N + k; docs/ARCHITECTURE.md).

Everything runs on the batch's device (CPU or GPU); torchaudio is used for DSP only (`add_noise`, `resample`).
"""

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torchaudio.functional as AF

__all__ = [
    "SimCLRAugment",
    "add_noise_at_snr",
    "apply_gain",
    "frequency_mask",
    "hz_to_mel",
    "mel_to_hz",
    "normalize_per_utterance",
    "speed_perturb",
    "time_mask",
]


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------
def _check_batch(x: torch.Tensor, lengths: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"Expected waveforms of shape (batch, time). Found: {list(x.shape)}")
    if lengths.shape != (x.shape[0],):
        raise ValueError(
            f"Expected lengths of shape ({x.shape[0]},) for waveforms {list(x.shape)}. Found: {list(lengths.shape)}"
        )
    if x.shape[0] and (int(lengths.min()) < 1 or int(lengths.max()) > x.shape[1]):
        raise ValueError(
            f"Valid lengths must lie in [1, {x.shape[1]}] for waveforms {list(x.shape)}; got {lengths.tolist()}."
        )


def _valid_mask(lengths: torch.Tensor, num_samples: int) -> torch.Tensor:
    """(B, T) bool, True on the first `lengths[b]` samples of row b."""
    return torch.arange(num_samples, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def hz_to_mel(frequency_hz: torch.Tensor | float) -> torch.Tensor | float:
    """HTK mel scale, 2595·log10(1 + f/700) (O'Shaughnessy 1987; the formula of torchaudio's `mel_scale="htk"`)."""
    if isinstance(frequency_hz, torch.Tensor):
        return 2595.0 * torch.log10(1.0 + frequency_hz / 700.0)
    return 2595.0 * math.log10(1.0 + frequency_hz / 700.0)


def mel_to_hz(mel: torch.Tensor | float) -> torch.Tensor | float:
    """Inverse of [`hz_to_mel`]: 700·(10^(m/2595) − 1) Hz."""
    if isinstance(mel, torch.Tensor):
        return 700.0 * (torch.pow(10.0, mel / 2595.0) - 1.0)
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# The augmentations, one function each
# ---------------------------------------------------------------------------------------------------------------------
def add_noise_at_snr(
    x: torch.Tensor,
    lengths: torch.Tensor,
    snr_db: torch.Tensor,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """
    Add noise at a given signal-to-noise ratio (`torchaudio.functional.add_noise`), measured over valid samples:
    10·log10(Σ x² / Σ n²) = `snr_db` per row, sums over the first `lengths[b]` samples.

    Args:
        x (`torch.Tensor` of shape `(B, T)`): Zero-padded waveforms.
        lengths (`torch.LongTensor` of shape `(B,)`): Valid samples per row.
        snr_db (`torch.Tensor` of shape `(B,)`): Target SNR per row in dB.
        generator (`torch.Generator`, *optional*): Source of the white Gaussian noise when `noise` is None; drawn on
            the generator's device, then moved to `x.device`.
        noise (`torch.Tensor` of shape `(B, T)`, *optional*): Noise to scale and add instead of white noise.

    Returns:
        `torch.Tensor` of shape `(B, T)`: noisy waveforms, zero beyond `lengths`. A silent row stays silent.

    Raises:
        ValueError: on shape mismatches or lengths outside [1, T].
    """
    _check_batch(x, lengths)
    if snr_db.shape != lengths.shape:
        raise ValueError(f"Expected snr_db of shape {list(lengths.shape)}. Found: {list(snr_db.shape)}")
    valid = _valid_mask(lengths, x.shape[1])
    if noise is None:
        noise_device = generator.device if generator is not None else x.device
        noise = torch.randn(x.shape, generator=generator, device=noise_device, dtype=torch.float32).to(x.device)
    elif noise.shape != x.shape:
        raise ValueError(f"Expected noise of shape {list(x.shape)}. Found: {list(noise.shape)}")
    x = x.masked_fill(~valid, 0.0)
    noise = noise.to(x.dtype).masked_fill(~valid, 0.0)
    noisy = AF.add_noise(x, noise, snr_db.to(x.dtype), lengths=lengths)
    # a silent row has -inf dB of signal: add_noise scales the noise by 0 (or nan when the noise is silent too)
    return torch.nan_to_num(noisy, nan=0.0).masked_fill(~valid, 0.0)


def speed_perturb(
    x: torch.Tensor, lengths: torch.Tensor, factors: torch.Tensor, sampling_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Speed perturbation (Ko et al. 2015, "Audio augmentation for speech recognition"): row b is treated as if it
    were recorded at `round(sampling_rate * factors[b])` Hz and resampled to `sampling_rate` Hz
    (`torchaudio.functional.resample`, as `torchaudio.transforms.Speed` does), which changes tempo and pitch
    together: factor > 1 is faster and shorter. Rows with equal factors are resampled as one batch.

    The valid length becomes ceil(lengths · sampling_rate / round(sampling_rate · factor)) (torchaudio's output
    length), ≈ lengths / factor. Because padding is zero, a padded row gives the same valid samples as the row alone.

    Args:
        x (`torch.Tensor` of shape `(B, T)`): Zero-padded waveforms.
        lengths (`torch.LongTensor` of shape `(B,)`): Valid samples per row.
        factors (`torch.Tensor` of shape `(B,)`): Speed factor per row (> 0; 1 leaves the row unchanged).
        sampling_rate (`int`): Sampling rate of `x` in Hz.

    Returns:
        `(y, new_lengths)`: `y` of shape `(B, T')` with T' = max(new_lengths), zero beyond `new_lengths` (B,).

    Raises:
        ValueError: on shape mismatches, lengths outside [1, T] or non-positive factors.
    """
    _check_batch(x, lengths)
    if factors.shape != lengths.shape:
        raise ValueError(f"Expected factors of shape {list(lengths.shape)}. Found: {list(factors.shape)}")
    if bool((factors <= 0).any()):
        raise ValueError(f"Speed factors must be > 0; got {factors.tolist()}.")
    x = x.masked_fill(~_valid_mask(lengths, x.shape[1]), 0.0)
    factor_list = factors.tolist()
    new_lengths = lengths.clone()
    resampled: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    for factor in sorted(set(factor_list)):
        source_rate = int(round(sampling_rate * factor))
        if source_rate == sampling_rate:
            continue
        divisor = math.gcd(source_rate, sampling_rate)
        orig_freq, new_freq = source_rate // divisor, sampling_rate // divisor
        rows = torch.tensor([i for i, f in enumerate(factor_list) if f == factor], device=x.device)
        longest = int(lengths[rows].max())
        group = AF.resample(x[rows, :longest], orig_freq=orig_freq, new_freq=new_freq)  # (R, ~longest/factor)
        new_lengths[rows] = torch.div(lengths[rows] * new_freq + orig_freq - 1, orig_freq, rounding_mode="floor")
        resampled[factor] = (rows, group)

    out_len = int(new_lengths.max()) if x.shape[0] else 0
    y = torch.zeros(x.shape[0], out_len, dtype=x.dtype, device=x.device)
    keep = min(out_len, x.shape[1])
    y[:, :keep] = x[:, :keep]
    for rows, group in resampled.values():
        y[rows] = 0.0
        width = min(out_len, group.shape[1])
        y[rows, :width] = group[:, :width]
    return y.masked_fill(~_valid_mask(new_lengths, out_len), 0.0), new_lengths


def time_mask(x: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """
    Time masking: zero the spans [starts[b, k], starts[b, k] + widths[b, k]) of row b (WavAugment's
    `time_dropout`, Kharitonov et al. 2021; SpecAugment's time masking, Park et al. 2019, on the waveform).

    Args:
        x (`torch.Tensor` of shape `(B, T)`): Zero-padded waveforms.
        lengths (`torch.LongTensor` of shape `(B,)`): Valid samples per row.
        starts (`torch.LongTensor` of shape `(B, K)`): First masked sample of each of K spans.
        widths (`torch.LongTensor` of shape `(B, K)`): Span lengths in samples (0 masks nothing).

    Returns:
        `torch.Tensor` of shape `(B, T)`: exactly zero inside the spans and beyond `lengths`, unchanged elsewhere.

    Raises:
        ValueError: on shape mismatches or lengths outside [1, T].
    """
    _check_batch(x, lengths)
    if starts.dim() != 2 or starts.shape != widths.shape or starts.shape[0] != x.shape[0]:
        raise ValueError(
            f"Expected starts and widths of shape ({x.shape[0]}, K). Found: {list(starts.shape)} and "
            f"{list(widths.shape)}"
        )
    t = torch.arange(x.shape[1], device=x.device).view(1, 1, -1)  # (1, 1, T)
    starts, ends = starts.unsqueeze(-1), (starts + widths).unsqueeze(-1)  # (B, K, 1)
    masked = ((t >= starts) & (t < ends)).any(dim=1)  # (B, T)
    return x.masked_fill(masked | ~_valid_mask(lengths, x.shape[1]), 0.0)


def frequency_mask(
    x: torch.Tensor, lengths: torch.Tensor, low_hz: torch.Tensor, high_hz: torch.Tensor, sampling_rate: int
) -> torch.Tensor:
    """
    Frequency masking (band reject): remove the band [low_hz[b], high_hz[b]] Hz from row b by zeroing its bins in
    the real FFT of the row's valid samples and transforming back (the band reject of WavAugment, Kharitonov et al.
    2021, as an ideal filter; SpecAugment's frequency masking, Park et al. 2019, on the waveform). Rows of equal
    length share one batched FFT; the FFT spans exactly the valid samples, so the band holds no energy afterwards.

    Args:
        x (`torch.Tensor` of shape `(B, T)`): Zero-padded waveforms.
        lengths (`torch.LongTensor` of shape `(B,)`): Valid samples per row.
        low_hz, high_hz (`torch.Tensor` of shape `(B,)`): Band edges in Hz (an empty band, low > high, is a no-op).
        sampling_rate (`int`): Sampling rate of `x` in Hz (bin k of an L-sample FFT is k·sampling_rate/L Hz).

    Returns:
        `torch.Tensor` of shape `(B, T)`: filtered waveforms, zero beyond `lengths`.

    Raises:
        ValueError: on shape mismatches or lengths outside [1, T].
    """
    _check_batch(x, lengths)
    if low_hz.shape != lengths.shape or high_hz.shape != lengths.shape:
        raise ValueError(
            f"Expected low_hz and high_hz of shape {list(lengths.shape)}. Found: {list(low_hz.shape)} and "
            f"{list(high_hz.shape)}"
        )
    out = x.masked_fill(~_valid_mask(lengths, x.shape[1]), 0.0)
    for length in torch.unique(lengths).tolist():
        rows = (lengths == length).nonzero().squeeze(1)
        spectrum = torch.fft.rfft(out[rows, :length].float(), dim=-1)  # (R, length // 2 + 1)
        bin_hz = torch.fft.rfftfreq(length, d=1.0 / sampling_rate, device=x.device)  # (length // 2 + 1,)
        band = (bin_hz >= low_hz[rows].unsqueeze(1)) & (bin_hz <= high_hz[rows].unsqueeze(1))
        out[rows, :length] = torch.fft.irfft(spectrum.masked_fill(band, 0.0), n=length, dim=-1).to(out.dtype)
    return out


def apply_gain(x: torch.Tensor, gain_db: torch.Tensor) -> torch.Tensor:
    """
    Gain: multiply row b by 10^(gain_db[b]/20), i.e. change its level by `gain_db[b]` dB.

    Args:
        x (`torch.Tensor` of shape `(B, T)`): Waveforms.
        gain_db (`torch.Tensor` of shape `(B,)`): Gain per row in dB.

    Returns:
        `torch.Tensor` of shape `(B, T)`.
    """
    if x.dim() != 2 or gain_db.shape != (x.shape[0],):
        raise ValueError(f"Expected x (B, T) and gain_db (B,). Found: {list(x.shape)} and {list(gain_db.shape)}")
    return x * torch.pow(10.0, gain_db.to(x.dtype) / 20.0).unsqueeze(1)


def normalize_per_utterance(x: torch.Tensor, lengths: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """
    Zero-mean unit-variance normalisation over each row's valid samples, padding set to 0 — the
    `Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm` of transformers: (x − mean) / sqrt(var + 1e-7), population
    variance.

    Args:
        x (`torch.Tensor` of shape `(B, T)`), lengths (`torch.LongTensor` of shape `(B,)`), eps (`float`).

    Returns:
        `torch.Tensor` of shape `(B, T)`.
    """
    _check_batch(x, lengths)
    valid = _valid_mask(lengths, x.shape[1])
    count = lengths.to(x.dtype).unsqueeze(1)  # (B, 1)
    mean = x.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / count
    var = ((x - mean).masked_fill(~valid, 0.0) ** 2).sum(dim=1, keepdim=True) / count
    return ((x - mean) / torch.sqrt(var + eps)).masked_fill(~valid, 0.0)


# ---------------------------------------------------------------------------------------------------------------------
# The SimCLR view maker
# ---------------------------------------------------------------------------------------------------------------------
class SimCLRAugment:
    """
    Make two independently augmented views of every clip of a collated batch, batched on the batch's device.

    Per view, in this order, each applied with its own probability: speed perturbation → gain → additive noise →
    frequency mask → re-normalisation (zero mean, unit variance over valid samples) → time mask (so masked spans
    equal the padding value 0). Parameter distributions (see [`SimCLRAudioConfig`] for the sources of the defaults):
    speed factor uniform over `speed_factors`; gain uniform in `gain_db`; SNR uniform in `noise_snr_db`; band width
    uniform in [0, `freq_mask_max_width`·mel(sr/2)] mel with its lower edge uniform on the mel scale; span length
    uniform in [0, `time_mask_max_ms`] and its start uniform within the valid samples.

    All randomness comes from the `generator` passed to `__call__` (drawn on the generator's device, moved to the
    batch's device), so the same seed gives the same views; a generator on the batch's device avoids host→device
    copies of the noise. Without a generator, torch's default generator of the batch's device is used.

    Args:
        sampling_rate (`int`): Sampling rate of the batches in Hz.
        noise_prob, speed_prob, time_mask_prob, freq_mask_prob, gain_prob (`float`): Per-view probabilities.
        noise_snr_db (`(float, float)`): SNR range in dB.
        speed_factors (`Sequence[float]`): Speed factors drawn uniformly.
        time_mask_max_ms (`float`): Maximum span length in milliseconds.
        time_mask_num_spans (`int`): Spans per masked view.
        freq_mask_max_width (`float`): Maximum band width as a fraction of the mel range [0, mel(sr/2)].
        gain_db (`(float, float)`): Gain range in dB.
        normalize (`bool`): Re-normalise each view over its valid samples.
        preserve_time_axis (`bool`): Never change lengths (speed perturbation off), as the "frame" granularity needs
            identical view lengths; warns once at construction if speed perturbation was configured.

    Raises:
        ValueError: if a probability is outside [0, 1], a range is reversed, a factor non-positive, ...
    """

    def __init__(
        self,
        *,
        sampling_rate: int,
        noise_prob: float = 0.5,
        noise_snr_db: Sequence[float] = (5.0, 15.0),
        speed_prob: float = 1.0,
        speed_factors: Sequence[float] = (0.9, 1.0, 1.1),
        time_mask_prob: float = 0.5,
        time_mask_max_ms: float = 50.0,
        time_mask_num_spans: int = 1,
        freq_mask_prob: float = 0.5,
        freq_mask_max_width: float = 27 / 256,
        gain_prob: float = 0.0,
        gain_db: Sequence[float] = (-6.0, 6.0),
        normalize: bool = True,
        preserve_time_axis: bool = False,
    ):
        if sampling_rate < 1:
            raise ValueError(f"`sampling_rate` must be a positive number of Hz, got {sampling_rate}.")
        probabilities = dict(
            noise_prob=noise_prob,
            speed_prob=speed_prob,
            time_mask_prob=time_mask_prob,
            freq_mask_prob=freq_mask_prob,
            gain_prob=gain_prob,
        )
        for name, value in probabilities.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` is a probability and must lie in [0, 1], got {value}.")
        for name, value in (("noise_snr_db", noise_snr_db), ("gain_db", gain_db)):
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"`{name}` must be a (low, high) pair with low <= high, got {tuple(value)}.")
        if len(speed_factors) == 0 or any(f <= 0 for f in speed_factors):
            raise ValueError(f"`speed_factors` must be a non-empty sequence of positive factors, got {speed_factors}.")
        if time_mask_max_ms < 0 or time_mask_num_spans < 0:
            raise ValueError(
                f"`time_mask_max_ms` and `time_mask_num_spans` must be >= 0, got {time_mask_max_ms} and "
                f"{time_mask_num_spans}."
            )
        if not 0.0 <= freq_mask_max_width <= 1.0:
            raise ValueError(f"`freq_mask_max_width` must lie in [0, 1], got {freq_mask_max_width}.")

        self.sampling_rate = int(sampling_rate)
        self.noise_prob, self.noise_snr_db = float(noise_prob), (float(noise_snr_db[0]), float(noise_snr_db[1]))
        self.speed_prob, self.speed_factors = float(speed_prob), tuple(float(f) for f in speed_factors)
        self.time_mask_prob, self.time_mask_max_ms = float(time_mask_prob), float(time_mask_max_ms)
        self.time_mask_num_spans = int(time_mask_num_spans)
        self.freq_mask_prob, self.freq_mask_max_width = float(freq_mask_prob), float(freq_mask_max_width)
        self.gain_prob, self.gain_db = float(gain_prob), (float(gain_db[0]), float(gain_db[1]))
        self.normalize = bool(normalize)
        self.preserve_time_axis = bool(preserve_time_axis)
        if self.preserve_time_axis and self.speed_prob > 0 and any(f != 1.0 for f in self.speed_factors):
            warnings.warn(
                f"Speed perturbation (speed_prob={self.speed_prob}, speed_factors={self.speed_factors}) changes view "
                "lengths, which frame-level SimCLR cannot pair; it is disabled.",
                UserWarning,
                stacklevel=2,
            )

    @classmethod
    def from_config(cls, config: Any) -> "SimCLRAugment":
        """
        Build from a `SimCLRAudioConfig` (its augmentation fields, `sampling_rate`, `normalize_views`; the time axis
        is preserved when `granularity == "frame"`).
        """
        return cls(
            sampling_rate=config.sampling_rate,
            noise_prob=config.noise_prob,
            noise_snr_db=config.noise_snr_db,
            speed_prob=config.speed_prob,
            speed_factors=config.speed_factors,
            time_mask_prob=config.time_mask_prob,
            time_mask_max_ms=config.time_mask_max_ms,
            time_mask_num_spans=config.time_mask_num_spans,
            freq_mask_prob=config.freq_mask_prob,
            freq_mask_max_width=config.freq_mask_max_width,
            gain_prob=config.gain_prob,
            gain_db=config.gain_db,
            normalize=config.normalize_views,
            preserve_time_axis=config.granularity == "frame",
        )

    def describe(self) -> list[dict[str, Any]]:
        """One row per augmentation, `{"name", "probability", "strength"}`, for model cards and logs."""
        speed_on = not self.preserve_time_axis
        return [
            {
                "name": "speed perturbation",
                "probability": self.speed_prob if speed_on else 0.0,
                "strength": f"factors {list(self.speed_factors)}" + ("" if speed_on else " (off: frame granularity)"),
            },
            {"name": "gain", "probability": self.gain_prob, "strength": f"{self.gain_db[0]} to {self.gain_db[1]} dB"},
            {
                "name": "additive noise",
                "probability": self.noise_prob,
                "strength": f"SNR {self.noise_snr_db[0]} to {self.noise_snr_db[1]} dB",
            },
            {
                "name": "frequency masking",
                "probability": self.freq_mask_prob,
                "strength": f"band up to {self.freq_mask_max_width:.3f} of the mel range",
            },
            {
                "name": "time masking",
                "probability": self.time_mask_prob,
                "strength": f"{self.time_mask_num_spans} span(s) up to {self.time_mask_max_ms} ms",
            },
        ]

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.__class__.__name__}({fields})"

    # random draws: on the generator's device (CPU generator → CPU draws), then moved to the batch's device
    @staticmethod
    def _rand(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        draw_device = generator.device if generator is not None else device
        return torch.rand(shape, generator=generator, device=draw_device).to(device)

    def _uniform(self, low: float, high: float, size: int, generator, device) -> torch.Tensor:
        return low + (high - low) * self._rand((size,), generator, device)

    def _coin(self, probability: float, size: int, generator, device) -> torch.Tensor:
        return self._rand((size,), generator, device) < probability

    def __call__(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        """
        Args:
            batch (`dict`): a collated batch with `input_values` `(N, T)` float and optionally `attention_mask`
                `(N, T)` (1 on valid samples; without it all samples are valid). Other keys are dropped.
            generator (`torch.Generator`, *optional*): source of all randomness.

        Returns:
            `dict` with `input_values` `(2N, T')` (view 1 of clip k in row k, view 2 in row N + k) and
            `attention_mask` `(2N, T')` (dtype of the input mask, int64 without one), on the batch's device.
            T' = T unless speed perturbation changed lengths.

        Raises:
            ValueError: if `input_values` is not 2-D or a clip has no valid sample.
        """
        x = batch["input_values"]
        if x.dim() != 2:
            raise ValueError(f"Expected batch['input_values'] of shape (N, T). Found: {list(x.shape)}")
        device, dtype = x.device, x.dtype
        mask = batch.get("attention_mask")
        mask_dtype = mask.dtype if mask is not None else torch.long
        num_clips, num_samples = x.shape
        lengths = mask.sum(dim=-1).long() if mask is not None else torch.full((num_clips,), num_samples, device=device)
        if num_clips and int(lengths.min()) < 1:
            raise ValueError(f"Every clip needs at least one valid sample; attention_mask lengths {lengths.tolist()}.")

        views = x.float().repeat(2, 1)  # (2N, T): rows 0..N-1 view 1, rows N..2N-1 view 2
        lengths = lengths.repeat(2)
        num_views = views.shape[0]
        views = views.masked_fill(~_valid_mask(lengths, num_samples), 0.0)

        if not self.preserve_time_axis and self.speed_prob > 0:
            choice = (self._rand((num_views,), generator, device) * len(self.speed_factors)).long()
            choice = choice.clamp(max=len(self.speed_factors) - 1)
            factors = torch.tensor(self.speed_factors, device=device)[choice]
            factors = torch.where(self._coin(self.speed_prob, num_views, generator, device), factors, 1.0)
            views, lengths = speed_perturb(views, lengths, factors, self.sampling_rate)

        if self.gain_prob > 0:
            gain = self._uniform(*self.gain_db, num_views, generator, device)
            gain = torch.where(self._coin(self.gain_prob, num_views, generator, device), gain, 0.0)
            views = apply_gain(views, gain)

        if self.noise_prob > 0:
            apply = self._coin(self.noise_prob, num_views, generator, device)
            snr = self._uniform(*self.noise_snr_db, num_views, generator, device)
            if bool(apply.any()):
                noisy = add_noise_at_snr(views, lengths, snr, generator=generator)
                views = torch.where(apply.unsqueeze(1), noisy, views)

        if self.freq_mask_prob > 0 and self.freq_mask_max_width > 0:
            apply = self._coin(self.freq_mask_prob, num_views, generator, device)
            mel_max = hz_to_mel(self.sampling_rate / 2)
            width = self._uniform(0.0, self.freq_mask_max_width * mel_max, num_views, generator, device)
            low = (mel_max - width) * self._rand((num_views,), generator, device)
            rows = apply.nonzero().squeeze(1)
            if rows.numel():
                views[rows] = frequency_mask(
                    views[rows],
                    lengths[rows],
                    mel_to_hz(low[rows]),
                    mel_to_hz(low[rows] + width[rows]),
                    self.sampling_rate,
                )

        if self.normalize:
            views = normalize_per_utterance(views, lengths)

        max_span = int(round(self.time_mask_max_ms * self.sampling_rate / 1000.0))
        if self.time_mask_prob > 0 and self.time_mask_num_spans > 0 and max_span > 0:
            apply = self._coin(self.time_mask_prob, num_views, generator, device)
            shape = (num_views, self.time_mask_num_spans)
            widths = (self._rand(shape, generator, device) * (max_span + 1)).long().clamp(max=max_span)
            widths = torch.minimum(widths, lengths.unsqueeze(1)) * apply.unsqueeze(1)
            starts = (self._rand(shape, generator, device) * (lengths.unsqueeze(1) - widths + 1)).long()
            views = time_mask(views, lengths, starts, widths)

        attention_mask = _valid_mask(lengths, views.shape[1]).to(mask_dtype)
        return {"input_values": views.to(dtype), "attention_mask": attention_mask}
