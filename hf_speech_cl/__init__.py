"""hf_speech_cl: self-supervised speech pretraining (SimCLR, HuBERT, wav2vec 2.0) for Hugging Face Transformers.

Importing the package registers its model types (`simclr_audio`, `hubert_pretraining`, `hubert_pseudo_labeler`,
`ctc_probe`) with the `transformers` Auto classes, so `AutoModel.from_pretrained` loads the checkpoints it writes.
`HubertIterator` / `HubertArguments` (the HuBERT pseudo-label iteration, `hf_speech_cl.hubert_iteration`) are
imported on first use: they load `datasets` and the training loop, which `import hf_speech_cl` does not.
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

#: Exported names imported on first access (PEP 562), with the submodule that defines them.
_LAZY_EXPORTS = {"HubertArguments": "hubert_iteration", "HubertIterator": "hubert_iteration"}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_EXPORTS))


__all__ = [
    "CTCProbeConfig",
    "CTCProbeForCTC",
    "HubertArguments",
    "HubertForPreTraining",
    "HubertIterator",
    "HubertPretrainingConfig",
    "HubertPseudoLabeler",
    "HubertPseudoLabelerConfig",
    "SimCLRAudioConfig",
    "SimCLRAudioForPreTraining",
    "SimCLRAudioModel",
    "__version__",
    "register_auto_classes",
]
