"""Configuration of the CTC probe: a frozen speech encoder, a learned weighted sum of its layers, a small head.

Imports only `transformers` (the `models/` wall): a saved checkpoint carries a copy of this file and loads with
`trust_remote_code=True` where `hf_speech_cl` is not installed.
"""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

__all__ = ["CTCProbeConfig"]

_REDUCTIONS = ("mean", "sum")


class CTCProbeConfig(PreTrainedConfig):
    r"""
    Configuration of [`CTCProbeForCTC`], the speech-recognition probe of the SUPERB protocol (Yang et al. 2021,
    "SUPERB: Speech processing Universal PERformance Benchmark", §3 and §4.1 ASR): the encoder is frozen, a softmax-
    normalised learned weight per hidden layer mixes all its hidden states (s3prl `Featurizer`), and a small
    downstream network maps the mixture to character logits trained with CTC (Graves et al. 2006).

    Args:
        encoder_config (`dict` or [`PreTrainedConfig`], *optional*):
            Configuration of the frozen encoder: any speech encoder `transformers.AutoModel` builds and that returns
            `hidden_states` (`wav2vec2`, `hubert`, `wavlm`, `data2vec-audio`, ...). A `dict` must carry its
            `model_type` (default `"wav2vec2"`). Stock types only, so that the checkpoint loads anywhere.
        vocab_size (`int`, *optional*, defaults to 32):
            Number of CTC output classes, the blank included (the tokenizer's `len()`).
        pad_token_id (`int`, *optional*, defaults to 0):
            Id of the padding token, used as the CTC blank (the convention of `Wav2Vec2ForCTC`; fairseq uses its
            dictionary's index 0, `<s>`, in the same role).
        probe_num_layers (`int`, *optional*, defaults to 2):
            Number of bidirectional LSTM layers of the downstream network; 0 gives a single linear layer on the
            weighted sum. SUPERB ASR uses 2 (s3prl `downstream/asr/config.yaml`: `RNNs`, `bidirection: True`).
        probe_hidden_size (`int`, *optional*, defaults to 1024):
            Units of each LSTM direction. SUPERB uses 1024; smaller values suit tiny encoders and CPU runs.
            Only relevant if `probe_num_layers > 0`.
        probe_dropout (`float`, *optional*, defaults to 0.2):
            Dropout after each LSTM layer and before the output layer (SUPERB ASR: 0.2).
        probe_layer_norm (`bool`, *optional*, defaults to `False`):
            Layer-normalise each hidden state (without learned scale/shift) before the weighted sum, as s3prl's
            `Featurizer(normalize=True)` does; helps when layers differ much in scale.
        freeze_encoder (`bool`, *optional*, defaults to `True`):
            Keep the encoder frozen: no gradients, and in eval mode (no dropout, layer drop or SpecAugment) even
            while the probe trains, as SUPERB's frozen upstream. Only the layer weights and the head train.
        ctc_loss_reduction (`str`, *optional*, defaults to `"mean"`):
            `"mean"`: each utterance's loss is divided by its target length, then averaged over the batch
            (`torch.nn.functional.ctc_loss(reduction="mean")`); `"sum"`: summed over the batch.
        ctc_zero_infinity (`bool`, *optional*, defaults to `True`):
            Zero infinite losses and their gradients (an utterance with more labels than frames), as fairseq's
            `criterion.zero_infinity: true` in its wav2vec 2.0 fine-tuning configs.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initialisation of the output layer's weights.

    Raises:
        ValueError: if a field is out of range (quoting the value that arrived).
    """

    model_type = "ctc_probe"
    sub_configs_defaults = {"encoder_config": SubConfigSpec(config_class=AutoConfig, model_type="wav2vec2")}

    encoder_config: dict | PreTrainedConfig | None = None
    vocab_size: int = 32
    pad_token_id: int | None = 0
    probe_num_layers: int = 2
    probe_hidden_size: int = 1024
    probe_dropout: float = 0.2
    probe_layer_norm: bool = False
    freeze_encoder: bool = True
    ctc_loss_reduction: str = "mean"
    ctc_zero_infinity: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vocab_size < 2:
            raise ValueError(f"`vocab_size` must be >= 2 (the blank and one symbol), got {self.vocab_size}.")
        if self.pad_token_id is None or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(
                f"`pad_token_id` (the CTC blank) must lie in [0, vocab_size={self.vocab_size}), got {self.pad_token_id}."
            )
        if self.probe_num_layers < 0:
            raise ValueError(f"`probe_num_layers` must be >= 0, got {self.probe_num_layers}.")
        if self.probe_num_layers > 0 and self.probe_hidden_size < 1:
            raise ValueError(f"`probe_hidden_size` must be >= 1, got {self.probe_hidden_size}.")
        if not 0.0 <= self.probe_dropout < 1.0:
            raise ValueError(f"`probe_dropout` must lie in [0, 1), got {self.probe_dropout}.")
        if self.ctc_loss_reduction not in _REDUCTIONS:
            raise ValueError(f"`ctc_loss_reduction` must be one of {_REDUCTIONS}, got {self.ctc_loss_reduction!r}.")

    @property
    def inputs_to_logits_ratio(self) -> int:
        """Input samples per output frame (the product of the encoder's conv strides; 320 for wav2vec 2.0 BASE)."""
        return self.encoder_config.inputs_to_logits_ratio

    @property
    def num_encoder_layers(self) -> int:
        """Hidden states mixed by the probe: the encoder's Transformer layers plus its input embeddings."""
        return self.encoder_config.num_hidden_layers + 1


CTCProbeConfig.register_for_auto_class()
