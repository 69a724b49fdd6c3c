"""Model families defined by this package.

Each subpackage imports only `torch`, `transformers` and its own files, so the code that `save_pretrained` copies into
a checkpoint runs with `trust_remote_code=True` where `hf_speech_cl` is not installed.
"""

from . import ctc_probe, hubert_pretraining, simclr_audio
from .ctc_probe import CTCProbeConfig, CTCProbeForCTC
from .hubert_pretraining import (
    HubertForPreTraining,
    HubertPretrainingConfig,
    HubertPseudoLabeler,
    HubertPseudoLabelerConfig,
)
from .simclr_audio import SimCLRAudioConfig, SimCLRAudioForPreTraining, SimCLRAudioModel, nt_xent_loss

__all__ = [
    "CTCProbeConfig",
    "CTCProbeForCTC",
    "HubertForPreTraining",
    "HubertPretrainingConfig",
    "HubertPseudoLabeler",
    "HubertPseudoLabelerConfig",
    "SimCLRAudioConfig",
    "SimCLRAudioForPreTraining",
    "SimCLRAudioModel",
    "nt_xent_loss",
    "register_auto_classes",
]


def register_auto_classes() -> None:
    """Register every model type of this package with the `transformers` Auto classes (idempotent)."""
    simclr_audio.register()
    hubert_pretraining.register()
    ctc_probe.register()
