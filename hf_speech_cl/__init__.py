"""hf_speech_cl: self-supervised speech pretraining (SimCLR, HuBERT, wav2vec 2.0) for Hugging Face Transformers.

Importing the package registers its model types (`simclr_audio`, `hubert_pretraining`, `hubert_pseudo_labeler`,
`ctc_probe`) with the `transformers` Auto classes, so `AutoModel.from_pretrained` loads the checkpoints it writes.
"""

from .stack import check_torch_stack

# before transformers (which imports torchaudio): a mismatched torch stack is a clear error, not a linker trace
check_torch_stack()

from .models import (  # noqa: E402
    CTCProbeConfig,
    CTCProbeForCTC,
    HubertForPreTraining,
    HubertPretrainingConfig,
    HubertPseudoLabeler,
    HubertPseudoLabelerConfig,
    SimCLRAudioConfig,
    SimCLRAudioForPreTraining,
    SimCLRAudioModel,
    register_auto_classes,
)

__version__ = "0.1.0"

register_auto_classes()

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
    "__version__",
    "register_auto_classes",
]
