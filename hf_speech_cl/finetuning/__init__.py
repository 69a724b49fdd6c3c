"""Downstream fine-tuning: CTC speech recognition (WER/CER), keyword spotting and emotion recognition.

Shared by `recipes/finetune_asr.py` and `recipes/finetune_audio_classification.py`:

- `checkpoints`: `load_pretrained_for_task(path, task, **head_kwargs)` turns any of our pretraining checkpoints, a
  stock speech encoder (local or Hub) or `none` into the model to fine-tune, or into a frozen-encoder probe.
- `vocab`: character vocabularies and the `Wav2Vec2CTCTokenizer` built from training transcripts.
- `ctc`: CTC batches, greedy decoding, WER/CER across processes, the frozen-Transformer phase.
- `classification`: label sets, accuracy/macro-F1 across processes, confusion matrices.
- `probe`: what trains in the probe mode; `parameter_summary`, the one log line of what trains, by module.
- `phone_probe`: the linear frame-level phone probe of frozen layers (with MFCC and random-encoder references) that
  every pretraining recipe reports (`PhoneProbe`, `run_phone_probe`).
- `cards`: `finalize_finetuning` (save, model card, Hub).
- `arguments`: `DropoutArguments`, the dropout flags both recipes share.
"""

from .arguments import DropoutArguments
from .cards import finalize_finetuning, format_metric
from .checkpoints import (
    NO_PRETRAINING,
    SPEECH_ENCODER_TYPES,
    TASKS,
    check_output_is_not_the_checkpoint,
    checkpoint_model_type,
    encoder_min_input_samples,
    load_feature_extractor,
    load_pretrained_for_task,
    resolve_encoder_checkpoint,
)
from .classification import (
    ClassificationEvaluator,
    DataCollatorAudioClassification,
    LabelMapper,
    check_labels,
    classification_metrics,
    label_names,
    save_confusion_matrix,
)
from .ctc import (
    CTCEvaluator,
    DataCollatorCTC,
    TransformerFreezer,
    asr_metrics,
    count_ctc_infeasible,
    ctc_infeasible,
    ctc_output_lengths,
    ctc_per_utterance_loss,
    greedy_ctc_decode,
)
from .phone_probe import (
    NoPhoneAlignmentsError,
    PhoneProbe,
    PhoneProbeArguments,
    PhoneProbeReport,
    ProbeResult,
    linear_probe_accuracy,
    load_probe_encoder,
    run_phone_probe,
)
from .probe import (
    format_count,
    keep_encoder_in_eval,
    parameter_groups,
    parameter_summary,
    prepare_for_finetuning,
    trainable_parameter_names,
)
from .vocab import (
    DEFAULT_CHARS_TO_REMOVE,
    PAD_TOKEN,
    UNK_TOKEN,
    WORD_DELIMITER,
    VocabularyCoverage,
    build_character_vocab,
    ctc_tokenizer_for,
    load_ctc_tokenizer,
    make_ctc_tokenizer,
    normalize_transcript,
    report_vocabulary_coverage,
    vocabulary_coverage,
)

__all__ = [
    "DEFAULT_CHARS_TO_REMOVE",
    "NO_PRETRAINING",
    "PAD_TOKEN",
    "SPEECH_ENCODER_TYPES",
    "TASKS",
    "UNK_TOKEN",
    "WORD_DELIMITER",
    "CTCEvaluator",
    "ClassificationEvaluator",
    "DataCollatorAudioClassification",
    "DataCollatorCTC",
    "DropoutArguments",
    "LabelMapper",
    "NoPhoneAlignmentsError",
    "PhoneProbe",
    "PhoneProbeArguments",
    "PhoneProbeReport",
    "ProbeResult",
    "TransformerFreezer",
    "VocabularyCoverage",
    "asr_metrics",
    "build_character_vocab",
    "check_labels",
    "check_output_is_not_the_checkpoint",
    "checkpoint_model_type",
    "classification_metrics",
    "count_ctc_infeasible",
    "ctc_infeasible",
    "ctc_tokenizer_for",
    "ctc_output_lengths",
    "ctc_per_utterance_loss",
    "encoder_min_input_samples",
    "finalize_finetuning",
    "format_count",
    "format_metric",
    "greedy_ctc_decode",
    "keep_encoder_in_eval",
    "label_names",
    "linear_probe_accuracy",
    "load_ctc_tokenizer",
    "load_feature_extractor",
    "load_pretrained_for_task",
    "load_probe_encoder",
    "make_ctc_tokenizer",
    "normalize_transcript",
    "parameter_groups",
    "parameter_summary",
    "prepare_for_finetuning",
    "report_vocabulary_coverage",
    "resolve_encoder_checkpoint",
    "run_phone_probe",
    "save_confusion_matrix",
    "trainable_parameter_names",
    "vocabulary_coverage",
]
