"""SimCLR audio model configuration.

The encoder is a stock wav2vec 2.0 network described by a nested [`~transformers.Wav2Vec2Config`]
(`backbone_config`); this config adds the SimCLR projection head, the NT-Xent objective and the waveform
augmentations, so that everything needed to reproduce a run is saved with the checkpoint.

This file imports only `transformers` (and the standard library): it is copied next to saved checkpoints and must
run with `trust_remote_code=True` where `hf_speech_cl` is not installed.
"""

from transformers import PreTrainedConfig, Wav2Vec2Config
from transformers.configuration_utils import SubConfigSpec

__all__ = ["SimCLRAudioConfig"]

# Defaults of the nested wav2vec 2.0 encoder that differ from `Wav2Vec2Config()` (wav2vec 2.0 BASE sizes):
# - `feat_extract_norm="layer"`, `do_stable_layer_norm=True`, `conv_bias=True`: the LARGE-LV60 layout (Baevski et al.
#   2020, §4.2; fairseq `extractor_mode="layer_norm"`, `layer_norm_first=True`). Its conv feature encoder normalises
#   each frame on its own, so zero padding plus `attention_mask` leaves the valid frames unchanged; the "group"
#   layout of BASE normalises over the whole (padded) time axis and must not be fed padded batches.
# - `apply_spec_augment=False`, `mask_time_prob=0.0`: SimCLR augments the waveform (see the augmentation fields
#   below), not the latent frames; without a mask probability the encoder has no unused `masked_spec_embed`.
# - `layerdrop=0.0`: a dropped layer leaves parameters without gradient, which DistributedDataParallel rejects
#   unless `find_unused_parameters=True`.
_BACKBONE_DEFAULTS = {
    "feat_extract_norm": "layer",
    "do_stable_layer_norm": True,
    "conv_bias": True,
    "apply_spec_augment": False,
    "mask_time_prob": 0.0,
    "layerdrop": 0.0,
}

_GRANULARITIES = ("utterance", "frame")
_PROJECTION_NORMS = ("batch_norm", "layer_norm", "none")


class SimCLRAudioConfig(PreTrainedConfig):
    r"""
    Configuration of [`SimCLRAudioModel`] and [`SimCLRAudioForPreTraining`]: SimCLR (Chen et al. 2020, "A Simple
    Framework for Contrastive Learning of Visual Representations") applied to raw speech with a wav2vec 2.0 encoder.

    Two augmented views of every clip go through the encoder; a projection head maps their representations to
    `projection_dim` and the NT-Xent loss pulls the two views of a clip together and pushes all other views of the
    batch away. The augmentation fields are read by `hf_speech_cl.augment.SimCLRAugment.from_config` and saved here
    so that a checkpoint records how it was trained.

    Args:
        backbone_config (`dict` or [`Wav2Vec2Config`], *optional*):
            Configuration of the wav2vec 2.0 encoder (a stock [`Wav2Vec2Model`]). A `dict` is merged over the
            defaults. Defaults to wav2vec 2.0 BASE sizes (768 hidden, 12 layers, 7 conv layers with strides
            (5, 2, 2, 2, 2, 2, 2) = 20 ms frames at 16 kHz) with the per-frame "layer" normalisation of the
            LARGE-LV60 model, no SpecAugment and no layer drop (see `_BACKBONE_DEFAULTS` in this file for why).
            Only `model_type="wav2vec2"` is accepted.
        projection_dim (`int`, *optional*, defaults to 128):
            Output size of the projection head g(·), the space in which NT-Xent is computed (SimCLR §B.9 / Fig. 8:
            128-d output).
        projection_hidden_size (`int`, *optional*):
            Width of the hidden layer of the projection head. Defaults to the encoder output size
            (`backbone_config.output_hidden_size`), as SimCLR's hidden layer has the width of the representation.
        projection_norm (`str`, *optional*, defaults to `"batch_norm"`):
            Normalisation after the first projection layer: `"batch_norm"` (the google-research/simclr
            `projection_head` uses batch norm in its hidden layers), `"layer_norm"` or `"none"`. Batch norm
            statistics are per process; SimCLR §B.3 uses global batch norm, which a training recipe gets with
            `torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)`.
        nt_xent_temperature (`float`, *optional*, defaults to 0.1):
            Temperature τ dividing the cosine similarities in NT-Xent (SimCLR eq. 1; Table 5 and §B.9 find 0.1 best
            with l2-normalised outputs). Not named `temperature`, which is a generation parameter that
            `save_pretrained` refuses to keep in a model config.
        gather_negatives_across_processes (`bool`, *optional*, defaults to `True`):
            In training mode, when `torch.distributed` is initialised with several processes, take the negatives
            of each anchor from the views of every process (through `torch.distributed.nn.functional.all_gather`,
            which keeps gradients) instead of the local batch only; every process must then run the forward pass.
            SimCLR §2.2 computes the loss over the global batch. In eval mode the loss is always local, so an
            evaluation on a subset of the processes cannot hang.
        granularity (`str`, *optional*, defaults to `"utterance"`):
            `"utterance"`: one embedding per view, the mean of the encoder's last hidden state over valid frames
            (classic SimCLR). `"frame"`: the positive of a frame is the same time step in the other view of the
            clip and the negatives are the other sampled frames of the batch; both views must then have identical
            lengths, so time-changing augmentations (speed) are disabled.
        frame_num_samples (`int`, *optional*, defaults to 16):
            Only relevant if `granularity="frame"`. Number of valid frames sampled per clip (fewer if the clip is
            shorter); `None` uses every valid frame. The loss costs O((2·N·frame_num_samples)²): 16 frames per clip
            costs as much as an utterance batch 16 times larger (our choice; no paper default).
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the waveforms in Hz (wav2vec 2.0 models consume 16 kHz audio). The augmentations use it
            to convert milliseconds and Hertz to samples and FFT bins; `export_encoder` writes it into the exported
            feature extractor.
        noise_prob (`float`, *optional*, defaults to 0.5):
            Probability that a view receives additive white Gaussian noise. 0.5 per view, like SimCLR's Gaussian
            blur (Chen et al. 2020, appendix A) and the band-reject/reverb wrappers of the WavAugment/CPC
            experiments (Kharitonov et al. 2021).
        noise_snr_db (`tuple[float, float]`, *optional*, defaults to `(5.0, 15.0)`):
            Range (dB) from which the signal-to-noise ratio of the added noise is drawn uniformly, measured over the
            valid samples of the view. 5–15 dB is the span of the noise levels of Kaldi's data augmentation for
            x-vectors (Snyder et al. 2018: MUSAN noise at 0–15 dB, music at 5–15 dB).
        speed_prob (`float`, *optional*, defaults to 1.0):
            Probability that a view is speed perturbed with a factor drawn uniformly from `speed_factors`.
        speed_factors (`tuple[float, ...]`, *optional*, defaults to `(0.9, 1.0, 1.1)`):
            Speed factors (>1 is faster and shorter). The default with `speed_prob=1.0` is the three-way speed
            perturbation of Ko et al. 2015 ("Audio augmentation for speech recognition"). Each factor is applied as
            a resampling from `round(sampling_rate * factor)` Hz to `sampling_rate` Hz. Ignored when
            `granularity="frame"`.
        time_mask_prob (`float`, *optional*, defaults to 0.5):
            Probability that a view has time spans zeroed.
        time_mask_max_ms (`float`, *optional*, defaults to 50.0):
            Maximum length of one zeroed span in milliseconds; each span's length is uniform in [0, max]. 50 ms is
            WavAugment's `time_dropout(max_seconds=0.05)` (Kharitonov et al. 2021; WavAugment
            `examples/python/librispeech_selfsupervised.py`).
        time_mask_num_spans (`int`, *optional*, defaults to 1):
            Number of spans zeroed in a masked view (WavAugment drops one).
        freq_mask_prob (`float`, *optional*, defaults to 0.5):
            Probability that a view has a frequency band removed.
        freq_mask_max_width (`float`, *optional*, defaults to 0.10546875):
            Maximum width of the removed band as a fraction of the mel-scale range [0, mel(sampling_rate / 2)]; the
            band's width is uniform in [0, max] and its lower edge uniform on the mel scale. 27/256 = 0.10546875 is
            the band reject of the CPC/WavAugment experiments (CPC_audio `BandrejectAugment.generate_freq_mask`:
            F = 27 mel units out of 256, after SpecAugment's F = 27, Park et al. 2019).
        gain_prob (`float`, *optional*, defaults to 0.0):
            Probability that a view's level is changed by a gain drawn from `gain_db`. Every other augmentation is
            scale-equivariant, so with `normalize_views=True` a gain is undone exactly by the re-normalisation;
            the default is therefore off. It acts when `normalize_views=False`.
        gain_db (`tuple[float, float]`, *optional*, defaults to `(-6.0, 6.0)`):
            Range (dB) of the gain (amplitude factor 10^(dB/20)), drawn uniformly.
        normalize_views (`bool`, *optional*, defaults to `True`):
            Re-normalise every augmented view to zero mean and unit variance over its valid samples, as
            [`Wav2Vec2FeatureExtractor`] does with `do_normalize=True`, so that pretraining inputs look like the
            inputs of fine-tuning and inference.

    Example:

    ```python
    >>> from transformers import Wav2Vec2Config
    >>> from hf_speech_cl.models.simclr_audio import SimCLRAudioConfig, SimCLRAudioForPreTraining

    >>> config = SimCLRAudioConfig(backbone_config=Wav2Vec2Config(hidden_size=256, num_hidden_layers=4,
    ...                                                          num_attention_heads=4, intermediate_size=1024))
    >>> model = SimCLRAudioForPreTraining(config)
    ```

    Raises:
        ValueError: if a field is out of range (quoting the value that arrived).
    """

    model_type = "simclr_audio"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=Wav2Vec2Config, init_kwargs=dict(_BACKBONE_DEFAULTS)),
    }

    backbone_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 128
    projection_hidden_size: int | None = None
    projection_norm: str = "batch_norm"
    nt_xent_temperature: float = 0.1
    gather_negatives_across_processes: bool = True
    granularity: str = "utterance"
    frame_num_samples: int | None = 16
    sampling_rate: int = 16000
    noise_prob: float = 0.5
    noise_snr_db: list[float] | tuple[float, float] = (5.0, 15.0)
    speed_prob: float = 1.0
    speed_factors: list[float] | tuple[float, ...] = (0.9, 1.0, 1.1)
    time_mask_prob: float = 0.5
    time_mask_max_ms: float = 50.0
    time_mask_num_spans: int = 1
    freq_mask_prob: float = 0.5
    freq_mask_max_width: float = 27 / 256
    gain_prob: float = 0.0
    gain_db: list[float] | tuple[float, float] = (-6.0, 6.0)
    normalize_views: bool = True

    def __post_init__(self, **kwargs):
        if isinstance(self.backbone_config, dict):
            backbone = dict(self.backbone_config)
            model_type = backbone.pop("model_type", Wav2Vec2Config.model_type)
            if model_type != Wav2Vec2Config.model_type:
                raise ValueError(
                    f"`backbone_config` must describe a wav2vec 2.0 encoder (model_type 'wav2vec2'), got model_type "
                    f"{model_type!r}."
                )
            self.backbone_config = Wav2Vec2Config(**{**_BACKBONE_DEFAULTS, **backbone})
        elif self.backbone_config is not None and not isinstance(self.backbone_config, Wav2Vec2Config):
            raise ValueError(
                "`backbone_config` must be a `Wav2Vec2Config`, a dict of its fields or None, got "
                f"{type(self.backbone_config).__name__}."
            )
        for name in ("noise_snr_db", "speed_factors", "gain_db"):
            value = getattr(self, name)
            if isinstance(value, list):
                setattr(self, name, tuple(value))
        super().__post_init__(**kwargs)
        self._validate_simclr_fields()

    @property
    def encoder_output_size(self) -> int:
        """Size of the encoder's last hidden state (`backbone_config.output_hidden_size`)."""
        return self.backbone_config.output_hidden_size or self.backbone_config.hidden_size

    def _validate_simclr_fields(self) -> None:
        if self.projection_dim < 1:
            raise ValueError(f"`projection_dim` must be >= 1, got {self.projection_dim}.")
        if self.projection_hidden_size is not None and self.projection_hidden_size < 1:
            raise ValueError(f"`projection_hidden_size` must be None or >= 1, got {self.projection_hidden_size}.")
        if self.projection_norm not in _PROJECTION_NORMS:
            raise ValueError(f"`projection_norm` must be one of {_PROJECTION_NORMS}, got {self.projection_norm!r}.")
        if not self.nt_xent_temperature > 0:
            raise ValueError(f"`nt_xent_temperature` must be > 0, got {self.nt_xent_temperature}.")
        if self.granularity not in _GRANULARITIES:
            raise ValueError(f"`granularity` must be one of {_GRANULARITIES}, got {self.granularity!r}.")
        if self.frame_num_samples is not None and self.frame_num_samples < 1:
            raise ValueError(f"`frame_num_samples` must be None or >= 1, got {self.frame_num_samples}.")
        if self.sampling_rate < 1:
            raise ValueError(f"`sampling_rate` must be a positive number of Hz, got {self.sampling_rate}.")
        for name in ("noise_prob", "speed_prob", "time_mask_prob", "freq_mask_prob", "gain_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` is a probability and must lie in [0, 1], got {value}.")
        for name in ("noise_snr_db", "gain_db"):
            value = getattr(self, name)
            if len(value) != 2 or value[0] > value[1]:
                raise ValueError(f"`{name}` must be a (low, high) pair with low <= high, got {value}.")
        if len(self.speed_factors) == 0 or any(factor <= 0 for factor in self.speed_factors):
            raise ValueError(
                f"`speed_factors` must be a non-empty sequence of positive factors, got {self.speed_factors}."
            )
        if self.time_mask_max_ms < 0:
            raise ValueError(f"`time_mask_max_ms` must be >= 0, got {self.time_mask_max_ms}.")
        if self.time_mask_num_spans < 0:
            raise ValueError(f"`time_mask_num_spans` must be >= 0, got {self.time_mask_num_spans}.")
        if not 0.0 <= self.freq_mask_max_width <= 1.0:
            raise ValueError(
                f"`freq_mask_max_width` is a fraction of the mel range and must lie in [0, 1], got "
                f"{self.freq_mask_max_width}."
            )


SimCLRAudioConfig.register_for_auto_class()
