"""Command-line arguments both fine-tuning recipes share: the encoder's dropout probabilities.

`DropoutArguments` are the dropout flags of transformers' `examples/pytorch/speech-recognition/
run_speech_recognition_ctc.py` (`attention_dropout`, `activation_dropout`, `feat_proj_dropout`, `hidden_dropout`,
`final_dropout`), with one difference: left unset they keep the value of the checkpoint's config (or of the preset
for `--model_name_or_path none`: transformers' `Wav2Vec2Config` defaults, 0.1 each except `feat_proj_dropout` 0.0),
instead of overwriting it with the script's own default.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DropoutArguments"]


def _probability(help_text: str) -> Any:
    return field(default=None, metadata={"help": help_text + " Default: the checkpoint's (preset's) value."})


@dataclass
class DropoutArguments:
    """Dropout probabilities of the encoder and the task head (`Wav2Vec2Config` / `HubertConfig` fields).

    Args:
        hidden_dropout: after every fully connected layer of the Transformer and the positional embedding
            (fairseq `dropout`).
        attention_dropout: on the attention probabilities (fairseq `attention_dropout`).
        activation_dropout: inside the feed-forward block, after its activation (fairseq `activation_dropout`).
        feat_proj_dropout: after the projection of the convolutional features (fairseq `dropout_input`).
        final_dropout: before the task head (`Wav2Vec2ForCTC.dropout`; fairseq `final_dropout`).

    Each is None (keep the config's value) or a probability in [0, 1).

    Raises:
        ValueError: a value outside [0, 1) (on construction, so a bad flag fails before any data is loaded).
    """

    hidden_dropout: float | None = _probability(
        "Dropout after every fully connected layer of the Transformer (fairseq dropout; wav2vec 2.0 BASE: 0.1)."
    )
    attention_dropout: float | None = _probability("Dropout on the attention probabilities (BASE: 0.1).")
    activation_dropout: float | None = _probability(
        "Dropout inside the feed-forward block, after the activation (BASE fine-tuning: 0.1)."
    )
    feat_proj_dropout: float | None = _probability(
        "Dropout after the projection of the convolutional features (fairseq dropout_input)."
    )
    final_dropout: float | None = _probability("Dropout before the task head (fairseq final_dropout).")

    def __post_init__(self) -> None:
        for name, value in self.config_overrides().items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be a probability in [0, 1), got {value}")

    def config_overrides(self) -> dict[str, float]:
        """`{config field: probability}` of the flags that were set, for `load_pretrained_for_task(**kwargs)`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
