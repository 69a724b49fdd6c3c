"""Waveform augmentations: each does what it says, and SimCLRAugment builds reproducible (2N, T') view batches."""

import math

import pytest
import torch

from hf_speech_cl.augment import (
    SimCLRAugment,
    add_noise_at_snr,
    apply_gain,
    frequency_mask,
    hz_to_mel,
    mel_to_hz,
    normalize_per_utterance,
    speed_perturb,
    time_mask,
)
from hf_speech_cl.models.simclr_audio import SimCLRAudioConfig

SR = 8000  # any rate: the functions take it as an argument


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), generator=generator)
    lengths = torch.tensor(lengths)
    x = x.masked_fill(torch.arange(x.shape[1]) >= lengths.unsqueeze(1), 0.0)
    return x, lengths


def snr_db(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * math.log10(float((clean**2).sum() / ((noisy - clean) ** 2).sum()))


def test_add_noise_at_snr_hits_the_requested_snr_on_valid_samples():
    x, lengths = padded_batch([3000, 2000, 2500])
    target = torch.tensor([5.0, 10.0, 20.0])
    noisy = add_noise_at_snr(x, lengths, target, generator=torch.Generator().manual_seed(0))
    for row, length in enumerate(lengths.tolist()):
        assert snr_db(x[row, :length], noisy[row, :length]) == pytest.approx(target[row].item(), abs=1e-3)
        assert bool((noisy[row, length:] == 0).all())
    again = add_noise_at_snr(x, lengths, target, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    silent = add_noise_at_snr(torch.zeros(1, 100), torch.tensor([100]), torch.tensor([10.0]))
    assert torch.equal(silent, torch.zeros(1, 100))


def test_speed_perturb_scales_length_and_frequency():
    length = 4000
    t = torch.arange(length) / SR
    tone = torch.sin(2 * math.pi * 440.0 * t)
    x = torch.stack([tone, tone, torch.nn.functional.pad(tone[:3000], (0, 1000))])
    lengths = torch.tensor([4000, 4000, 3000])
    factors = torch.tensor([1.1, 0.9, 1.1])
    y, new_lengths = speed_perturb(x, lengths, factors, SR)
    expected = [math.ceil(n * SR / round(SR * f)) for n, f in zip(lengths.tolist(), factors.tolist())]
    assert new_lengths.tolist() == expected
    assert y.shape == (3, max(expected))
    assert new_lengths[0] == pytest.approx(4000 / 1.1, abs=1) and new_lengths[1] == pytest.approx(4000 / 0.9, abs=1)
    for row in range(3):
        assert bool((y[row, new_lengths[row] :] == 0).all())
    # pitch moves with the speed: the 440 Hz peak lands at 440·factor Hz
    for row in (0, 1):
        n = int(new_lengths[row])
        peak_hz = torch.fft.rfft(y[row, :n]).abs().argmax().item() * SR / n
        assert peak_hz == pytest.approx(440.0 * factors[row].item(), abs=2 * SR / n)
    # a padded row gives the same valid samples as the row alone
    alone, alone_lengths = speed_perturb(tone[None, :3000], torch.tensor([3000]), torch.tensor([1.1]), SR)
    torch.testing.assert_close(y[2, : alone_lengths[0]], alone[0], atol=1e-6, rtol=1e-5)
    unchanged, same_lengths = speed_perturb(x, lengths, torch.ones(3), SR)
    assert torch.equal(unchanged, x) and torch.equal(same_lengths, lengths)
    with pytest.raises(ValueError, match="> 0"):
        speed_perturb(x, lengths, torch.tensor([1.0, 0.0, 1.0]), SR)


def test_time_mask_zeroes_exactly_the_spans():
    x, lengths = padded_batch([1000, 800])
    x = x + 3.0 * (torch.arange(1000) < lengths.unsqueeze(1))  # no valid sample is zero by chance
    starts = torch.tensor([[100, 500], [0, 790]])
    widths = torch.tensor([[50, 0], [10, 40]])
    y = time_mask(x, lengths, starts, widths)
    expected = torch.zeros_like(x, dtype=torch.bool)
    expected[0, 100:150] = True
    expected[1, 0:10] = True
    expected[1, 790:] = True  # the span runs into padding, which is zero anyway
    assert bool((y[expected] == 0).all())
    kept = ~expected & (torch.arange(1000) < lengths.unsqueeze(1))
    assert torch.equal(y[kept], x[kept])
    assert int((y == 0).sum()) == 50 + 10 + 10 + 200  # three spans (one cut at the valid end) + row 1's padding


def test_frequency_mask_removes_the_band_energy():
    x, lengths = padded_batch([4000, 3001])
    low, high = torch.tensor([500.0, 1000.0]), torch.tensor([1200.0, 1800.0])
    y = frequency_mask(x, lengths, low, high, SR)
    for row, length in enumerate(lengths.tolist()):
        freqs = torch.fft.rfftfreq(length, d=1 / SR)
        band = (freqs >= low[row]) & (freqs <= high[row])
        before = torch.fft.rfft(x[row, :length]).abs() ** 2
        after = torch.fft.rfft(y[row, :length]).abs() ** 2
        assert after[band].sum() < 1e-8 * before[band].sum()
        torch.testing.assert_close(after[~band], before[~band], rtol=1e-3, atol=1e-3)
        assert bool((y[row, length:] == 0).all())


def test_apply_gain_and_normalize():
    x, lengths = padded_batch([2000, 1500])
    gains = torch.tensor([6.0, -3.0])
    y = apply_gain(x, gains)
    for row in range(2):
        assert 20 * math.log10(float(y[row].norm() / x[row].norm())) == pytest.approx(gains[row].item(), abs=1e-4)
    z = normalize_per_utterance(3.0 * x + 1.0, lengths)
    for row, length in enumerate(lengths.tolist()):
        assert z[row, :length].mean().item() == pytest.approx(0.0, abs=1e-5)
        assert z[row, :length].var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
        assert bool((z[row, length:] == 0).all())
    assert mel_to_hz(hz_to_mel(1234.0)) == pytest.approx(1234.0)


def test_simclr_augment_builds_reproducible_views():
    config = SimCLRAudioConfig(sampling_rate=SR, noise_prob=1.0, time_mask_prob=1.0, freq_mask_prob=1.0)
    augment = SimCLRAugment.from_config(config)
    x, lengths = padded_batch([2400, 2000, 1600])
    batch = {"input_values": x, "attention_mask": (torch.arange(2400) < lengths.unsqueeze(1)).long(), "id": ["a"]}
    views = augment(batch, torch.Generator().manual_seed(0))
    assert set(views) == {"input_values", "attention_mask"}
    values, mask = views["input_values"], views["attention_mask"]
    assert values.shape[0] == 6 and mask.shape == values.shape and mask.dtype == torch.long
    assert values.shape[1] == int(mask.sum(dim=-1).max())
    # view lengths are speed-perturbed copies of the clip lengths
    allowed = [{math.ceil(n * SR / round(SR * f)) for f in config.speed_factors} for n in lengths.tolist()]
    for row, length in enumerate(mask.sum(dim=-1).tolist()):
        assert length in allowed[row % 3]
        assert bool((values[row, length:] == 0).all())
    assert not torch.equal(values[0], values[3])  # two independent views of clip 0
    again = augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(again["input_values"], values) and torch.equal(again["attention_mask"], mask)
    other = augment(batch, torch.Generator().manual_seed(1))
    assert not torch.equal(
        other["input_values"][:, : min(other["input_values"].shape[1], values.shape[1])],
        values[:, : min(other["input_values"].shape[1], values.shape[1])],
    )

    unmasked = SimCLRAugment(sampling_rate=SR, time_mask_prob=0.0, noise_prob=1.0)(
        batch, torch.Generator().manual_seed(0)
    )
    valid = unmasked["attention_mask"].bool()
    for row in range(6):
        view = unmasked["input_values"][row][valid[row]]
        assert view.mean().item() == pytest.approx(0.0, abs=1e-5)
        assert view.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)


def test_simclr_augment_noise_snr_within_range():
    augment = SimCLRAugment(
        sampling_rate=SR,
        noise_prob=1.0,
        noise_snr_db=(5.0, 15.0),
        speed_prob=0.0,
        time_mask_prob=0.0,
        freq_mask_prob=0.0,
        normalize=False,
    )
    x, lengths = padded_batch([3000] * 8)
    views = augment({"input_values": x}, torch.Generator().manual_seed(0))["input_values"]
    measured = [snr_db(x[row % 8], views[row]) for row in range(16)]
    assert all(5.0 - 1e-3 <= value <= 15.0 + 1e-3 for value in measured), measured
    assert max(measured) - min(measured) > 3.0  # drawn from the range, not a constant


def test_frame_granularity_keeps_lengths_and_warns():
    config = SimCLRAudioConfig(granularity="frame", sampling_rate=SR)
    with pytest.warns(UserWarning, match="disabled"):
        augment = SimCLRAugment.from_config(config)
    x, lengths = padded_batch([2000, 1500])
    mask = (torch.arange(2000) < lengths.unsqueeze(1)).long()
    views = augment({"input_values": x, "attention_mask": mask}, torch.Generator().manual_seed(0))
    assert torch.equal(views["attention_mask"], mask.repeat(2, 1))


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="noise_prob.*1.2"):
        SimCLRAugment(sampling_rate=SR, noise_prob=1.2)
    with pytest.raises(ValueError, match=r"gain_db.*\(6.0, -6.0\)"):
        SimCLRAugment(sampling_rate=SR, gain_db=(6.0, -6.0))
    with pytest.raises(ValueError, match=r"\(N, T\). Found: \[10\]"):
        SimCLRAugment(sampling_rate=SR)({"input_values": torch.zeros(10)})
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        time_mask(
            torch.zeros(1, 10),
            torch.tensor([11]),
            torch.zeros(1, 1, dtype=torch.long),
            torch.zeros(1, 1, dtype=torch.long),
        )
