"""The SUPERB-style CTC probe (`model_type="ctc_probe"`): a frozen speech encoder, a learned weighted sum of its
hidden layers and a small BiLSTM/linear head trained with CTC.

`register()` maps it to `AutoConfig` and `AutoModelForCTC`; saved checkpoints also carry an `auto_map` and the model
code, so `AutoModelForCTC.from_pretrained(path, trust_remote_code=True)` works without this package.
"""

from transformers import AutoConfig, AutoModelForCTC

from .configuration_ctc_probe import CTCProbeConfig
from .modeling_ctc_probe import CTCProbeForCTC, CTCProbePreTrainedModel, weighted_layer_sum

__all__ = ["CTCProbeConfig", "CTCProbeForCTC", "CTCProbePreTrainedModel", "register", "weighted_layer_sum"]


def register() -> None:
    """Register `ctc_probe` with `AutoConfig` and `AutoModelForCTC` (→ [`CTCProbeForCTC`]). Idempotent."""
    AutoConfig.register(CTCProbeConfig.model_type, CTCProbeConfig, exist_ok=True)
    AutoModelForCTC.register(CTCProbeConfig, CTCProbeForCTC, exist_ok=True)
