"""SimCLR for raw speech with a wav2vec 2.0 encoder (`model_type="simclr_audio"`).

`register()` makes the classes known to the `transformers` Auto classes; checkpoints additionally carry an
`auto_map` and the model code, so `AutoModel.from_pretrained(path, trust_remote_code=True)` works without this
package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForPreTraining

from .configuration_simclr_audio import SimCLRAudioConfig
from .modeling_simclr_audio import (
    NTXentOutput,
    SimCLRAudioForPreTraining,
    SimCLRAudioForPreTrainingOutput,
    SimCLRAudioModel,
    SimCLRAudioModelOutput,
    SimCLRAudioPreTrainedModel,
    SimCLRAudioProjectionHead,
    nt_xent_loss,
)

__all__ = [
    "NTXentOutput",
    "SimCLRAudioConfig",
    "SimCLRAudioForPreTraining",
    "SimCLRAudioForPreTrainingOutput",
    "SimCLRAudioModel",
    "SimCLRAudioModelOutput",
    "SimCLRAudioPreTrainedModel",
    "SimCLRAudioProjectionHead",
    "nt_xent_loss",
    "register",
]


def register() -> None:
    """
    Register `simclr_audio` with `AutoConfig`, `AutoModel` (→ [`SimCLRAudioModel`]) and `AutoModelForPreTraining`
    (→ [`SimCLRAudioForPreTraining`]). Idempotent (`exist_ok=True`).
    """
    AutoConfig.register(SimCLRAudioConfig.model_type, SimCLRAudioConfig, exist_ok=True)
    AutoModel.register(SimCLRAudioConfig, SimCLRAudioModel, exist_ok=True)
    AutoModelForPreTraining.register(SimCLRAudioConfig, SimCLRAudioForPreTraining, exist_ok=True)
