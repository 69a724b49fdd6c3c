"""Encoder size presets shared by every recipe, so objectives can be compared at one backbone size.

The keyword arguments are common to `Wav2Vec2Config` and `HubertConfig` (same architecture: a 7-layer convolutional
feature encoder with a total stride of 320 samples = 20 ms at 16 kHz, then a Transformer).

- `base`: the BASE model of wav2vec 2.0 (Baevski et al. 2020, §4.2) and HuBERT (Hsu et al. 2021, §IV-C):
  768 hidden, 12 layers, 12 heads, 3072 FFN, 512 conv channels, group-norm feature encoder; 95 M parameters.
- `small`: 256 hidden, 4 layers, 256 conv channels; 5 M parameters (16 audio-s/s per 2-core CPU step, ENV.md).
- `tiny`: 128 hidden, 2 layers, 64 conv channels; < 1 M parameters; what the tests use (`--model_size tiny`).
- `cpu`: compute-shaped for a CPU: conv channels growing as the frame rate falls, (32, 64, 128, 128, 256, 256, 256),
  under a 6 x 256 Transformer; 5.5 M parameters. The first convolutions run at 3.2 kHz and 1.6 kHz frame rates, so
  `small`'s 256 channels there cost 5x its Transformer; here the front end costs no more than the Transformer
  (`python benchmarks/throughput.py --front_end_share`). This is SEW's compact wave feature extractor idea (Wu et
  al. 2021, "Performance-Efficiency Trade-offs in Unsupervised Pre-training for Speech Recognition", §4.1) in a
  stock `Wav2Vec2Config` (no squeeze/upsample), so `Wav2Vec2ForPreTraining`, `Wav2Vec2ForCTC` and `HubertModel` load
  it.
- `gpu`: the `cpu` shape scaled for a GPU: channels (64, 128, 256, 256, 512, 512, 512), 8 x 512 Transformer.

Every recipe builds `cpu` on a machine without CUDA and `gpu` with it unless `--model_size` says otherwise
(`default_model_size`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ENCODER_PRESETS", "default_model_size", "encoder_preset"]

_CONV = {"conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}

ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **_CONV,
        "conv_dim": (64,) * 7,
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 512,
        "num_conv_pos_embeddings": 64,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "small": {
        **_CONV,
        "conv_dim": (256,) * 7,
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "cpu": {
        **_CONV,
        "conv_dim": (32, 64, 128, 128, 256, 256, 256),
        "hidden_size": 256,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "gpu": {
        **_CONV,
        "conv_dim": (64, 128, 256, 256, 512, 512, 512),
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
    },
    "base": {
        **_CONV,
        "conv_dim": (512,) * 7,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
    },
}


def default_model_size() -> str:
    """The preset a recipe builds when no `--model_size` (and no checkpoint) is given: `gpu` where CUDA is available
    and the run is not forced onto the CPU (`accelerate launch --cpu` sets `ACCELERATE_USE_CPU`), else `cpu` — the
    compute-shaped presets, whose front end costs no more than their Transformer on that hardware.

    `tiny` stays available (`--model_size tiny`) for tests and quick checks; `base` is the papers' BASE model.
    """
    import torch
    from accelerate.utils import parse_flag_from_env

    return "gpu" if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU") else "cpu"


def encoder_preset(name: str, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `Wav2Vec2Config`/`HubertConfig` of preset `name`, updated with `overrides`.

    Raises:
        ValueError: for an unknown preset name (lists the known ones).
    """
    if name not in ENCODER_PRESETS:
        raise ValueError(f"Unknown encoder preset {name!r}; choose one of {sorted(ENCODER_PRESETS)}")
    kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ENCODER_PRESETS[name].items()}
    kwargs.update(overrides)
    return kwargs
