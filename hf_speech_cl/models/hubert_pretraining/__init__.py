"""HuBERT masked-prediction pretraining (`HubertForPreTraining`) and its k-means labeler (`HubertPseudoLabeler`).

`register()` maps both configs to the Auto classes (the package calls it at import) and marks the classes for
`save_pretrained` to copy their code into checkpoints, so those load with `trust_remote_code=True` anywhere.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_hubert_pretraining import HubertPretrainingConfig, HubertPseudoLabelerConfig, stock_hubert_config
from .modeling_hubert_pretraining import (
    HubertForPreTraining,
    HubertForPreTrainingOutput,
    HubertPseudoLabeler,
    HubertPseudoLabelerOutput,
    hubert_layer_features,
    kaldi_mfcc,
    nearest_centroid,
    normalize_waveform,
)

__all__ = [
    "HubertForPreTraining",
    "HubertForPreTrainingOutput",
    "HubertPretrainingConfig",
    "HubertPseudoLabeler",
    "HubertPseudoLabelerConfig",
    "HubertPseudoLabelerOutput",
    "hubert_layer_features",
    "kaldi_mfcc",
    "nearest_centroid",
    "normalize_waveform",
    "register",
    "stock_hubert_config",
]


def register() -> None:
    """Register with the Auto classes (idempotent).

    `AutoConfig`: `"hubert_pretraining"` → `HubertPretrainingConfig`, `"hubert_pseudo_labeler"` →
    `HubertPseudoLabelerConfig`; `AutoModelForPreTraining` → `HubertForPreTraining`; `AutoModel` →
    `HubertPseudoLabeler`. Also `register_for_auto_class`, so saved checkpoints carry `auto_map` and a copy of the
    two model files.
    """
    AutoConfig.register(HubertPretrainingConfig.model_type, HubertPretrainingConfig, exist_ok=True)
    AutoConfig.register(HubertPseudoLabelerConfig.model_type, HubertPseudoLabelerConfig, exist_ok=True)
    AutoModelForPreTraining.register(HubertPretrainingConfig, HubertForPreTraining, exist_ok=True)
    AutoModel.register(HubertPseudoLabelerConfig, HubertPseudoLabeler, exist_ok=True)
    HubertPretrainingConfig.register_for_auto_class("AutoConfig")
    HubertPseudoLabelerConfig.register_for_auto_class("AutoConfig")
    HubertForPreTraining.register_for_auto_class("AutoModelForPreTraining")
    HubertPseudoLabeler.register_for_auto_class("AutoModel")
