"""Audio I/O for the data pipeline: safe decoding, header-only durations, resampling, receptive fields.

Decoding reads WAV/FLAC/OGG/MP3 with `soundfile` (libsndfile; fast, no FFmpeg start-up) and falls back to
`torchcodec` (FFmpeg, the decoder `datasets` itself uses) for anything libsndfile cannot open. Resampling is
`torchaudio.functional.resample` (band-limited sinc interpolation). Every failure surfaces as `AudioDecodingError`,
so a caller can skip a broken file with one `except` clause.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import soundfile
import torch
import torchaudio
from transformers import Wav2Vec2FeatureExtractor

__all__ = [
    "DEFAULT_SAMPLING_RATE",
    "AudioDecodingError",
    "audio_duration",
    "decode_audio",
    "min_input_samples",
    "receptive_field_samples",
    "resample",
]

#: The sampling rate of `Wav2Vec2FeatureExtractor()` (and of LibriSpeech, wav2vec 2.0 and HuBERT): the default
#: target rate of the pipeline, read from transformers rather than written as a literal.
DEFAULT_SAMPLING_RATE: int = Wav2Vec2FeatureExtractor().sampling_rate


class AudioDecodingError(RuntimeError):
    """An audio value could not be decoded (unreadable, corrupt or unsupported file)."""


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("path") or "<in-memory audio>")
    return str(value)


def _open_source(value: Any) -> tuple[Any, str]:
    """A seekable source (`BytesIO` or local path) for an `{"bytes", "path"}` dict or a path; and its name."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value), os.fspath(value)
    if isinstance(value, (bytes, bytearray)):
        return io.BytesIO(value), "<bytes>"
    if isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if data is not None:
            return io.BytesIO(data), path or "<bytes>"
        if path is not None:
            if os.path.isfile(path):
                return path, path
            # A remote file (hf://, https://, a path inside an archive): `datasets` opens it with its credentials.
            from datasets.utils.file_utils import xopen

            with xopen(path, "rb") as handle:
                return io.BytesIO(handle.read()), path
    raise AudioDecodingError(
        f"Cannot read audio from {type(value).__name__} {_describe(value)!r}: expected a path, bytes, or a dict with "
        "'bytes'/'path' or 'array'/'sampling_rate'."
    )


def resample(waveform: np.ndarray, orig_sampling_rate: int, sampling_rate: int) -> np.ndarray:
    """Resample a mono waveform `(samples,)` from `orig_sampling_rate` to `sampling_rate` (Hz).

    Uses `torchaudio.functional.resample` (windowed-sinc, Hann window, 6 zero crossings); returns float32.
    """
    if orig_sampling_rate == sampling_rate:
        return waveform
    out = torchaudio.functional.resample(
        torch.from_numpy(np.ascontiguousarray(waveform)), orig_sampling_rate, sampling_rate
    )
    return out.numpy().astype(np.float32, copy=False)


def decode_audio(value: Any, sampling_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Decode one audio value to a mono float32 waveform, resampled to `sampling_rate` if given.

    Args:
        value: what a `datasets.Audio(decode=False)` column holds (`{"bytes": ..., "path": ...}`), a decoded
            `{"array", "sampling_rate"}` dict, a file path, raw file bytes, or a `torchcodec` `AudioDecoder`.
        sampling_rate: target rate in Hz; `None` keeps the file's rate.

    Returns:
        `(waveform, native_sampling_rate)`: `waveform` has shape `(samples,)` at `sampling_rate` (channels are
        averaged); `native_sampling_rate` is the rate stored in the file, so callers can count resampling.

    Raises:
        AudioDecodingError: the value cannot be decoded (corrupt or unsupported file, missing path, bad array).
    """
    try:
        if isinstance(value, Mapping) and value.get("array") is not None:
            array = np.asarray(value["array"], dtype=np.float32)
            native = int(value["sampling_rate"])
            # `datasets` >= 4.4 returns (channels, samples) for multi-channel audio.
            waveform = array.mean(axis=tuple(range(array.ndim - 1))) if array.ndim > 1 else array
        elif hasattr(value, "get_all_samples"):  # a torchcodec AudioDecoder (a decoded `datasets.Audio` value)
            samples = value.get_all_samples()
            waveform, native = samples.data.mean(dim=0).numpy(), int(samples.sample_rate)
        else:
            source, name = _open_source(value)
            try:
                data, native = soundfile.read(source, dtype="float32", always_2d=True)
                waveform = data.mean(axis=1)
            except soundfile.LibsndfileError as sf_error:
                # libsndfile cannot open it (e.g. AAC/M4A, or garbage): let FFmpeg try before giving up.
                from torchcodec.decoders import AudioDecoder

                if isinstance(source, io.BytesIO):
                    source = source.getvalue()
                try:
                    samples = AudioDecoder(source).get_all_samples()
                except Exception as ff_error:
                    raise AudioDecodingError(f"{name}: libsndfile: {sf_error}; FFmpeg: {ff_error}") from ff_error
                waveform, native = samples.data.mean(dim=0).numpy(), int(samples.sample_rate)
    except AudioDecodingError:
        raise
    except Exception as error:  # any decoder failure means "this file is unusable"
        raise AudioDecodingError(f"{_describe(value)}: {type(error).__name__}: {error}") from error
    waveform = np.ascontiguousarray(waveform, dtype=np.float32)
    if sampling_rate is not None and native != sampling_rate and waveform.size:
        waveform = resample(waveform, native, sampling_rate)
    return waveform, native


def audio_duration(value: Any) -> float:
    """Duration in seconds read from the file header only (no decoding); `nan` if the file is unreadable.

    `soundfile.info` first (well under a millisecond per WAV/FLAC), then torchcodec's stream metadata; a container
    without a duration in its header is decoded to measure it.
    """
    try:
        if isinstance(value, Mapping) and value.get("array") is not None:
            array = np.asarray(value["array"])
            return array.shape[-1] / float(value["sampling_rate"])
        if hasattr(value, "get_all_samples"):
            metadata = value.metadata
            if metadata.duration_seconds_from_header is not None:
                return float(metadata.duration_seconds_from_header)
            return float(value.get_all_samples().duration_seconds)
        source, _ = _open_source(value)
        try:
            info = soundfile.info(source)
            return info.frames / float(info.samplerate)
        except soundfile.LibsndfileError:
            from torchcodec.decoders import AudioDecoder

            decoder = AudioDecoder(source.getvalue() if isinstance(source, io.BytesIO) else source)
            duration = decoder.metadata.duration_seconds_from_header
            return float(duration) if duration is not None else float(decoder.get_all_samples().duration_seconds)
    except Exception:  # unreadable header: the caller filters and counts it
        return math.nan


def receptive_field_samples(conv_kernel: Sequence[int], conv_stride: Sequence[int]) -> int:
    """Input samples one output frame of a stack of 1-D convolutions (no padding) depends on.

    `r = k_1 + sum_{i>1} (k_i - 1) * prod_{j<i} s_j`: the shortest input for which
    `Wav2Vec2Model._get_feat_extract_output_lengths` returns 1. For the wav2vec 2.0 / HuBERT feature encoder
    (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2; Baevski et al. 2020 §2) this is 400 samples (25 ms at 16 kHz).

    Raises:
        ValueError: if the two sequences differ in length, are empty, or hold a value < 1.
    """
    kernels, strides = list(conv_kernel), list(conv_stride)
    if not kernels or len(kernels) != len(strides) or min(kernels + strides) < 1:
        raise ValueError(
            f"conv_kernel and conv_stride must be non-empty, of equal length and positive; got conv_kernel={kernels}, "
            f"conv_stride={strides}"
        )
    field, jump = kernels[0], strides[0]
    for kernel, stride in zip(kernels[1:], strides[1:]):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def min_input_samples(config: Any, num_frames: int = 1) -> int:
    """Fewest input samples for which the encoder of `config` emits `num_frames` frames.

    `receptive_field_samples(config.conv_kernel, config.conv_stride) + (num_frames - 1) * prod(config.conv_stride)`.

    Args:
        config: anything with `conv_kernel` and `conv_stride` (`Wav2Vec2Config`, `HubertConfig`, a SimCLR
            backbone config).
        num_frames: frames wanted (>= 1); e.g. `config.mask_time_length` for clips that can hold one mask span.

    Raises:
        ValueError: if `config` has no `conv_kernel`/`conv_stride` or `num_frames < 1`.
    """
    if not hasattr(config, "conv_kernel") or not hasattr(config, "conv_stride"):
        raise ValueError(f"{type(config).__name__} has no conv_kernel/conv_stride: not a wav2vec 2.0-style encoder")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return receptive_field_samples(config.conv_kernel, config.conv_stride) + (num_frames - 1) * math.prod(
        config.conv_stride
    )
