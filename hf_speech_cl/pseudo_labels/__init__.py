"""HuBERT pseudo-labels: frame features, k-means, label quality metrics and the resumable labelling stages.

fairseq's `examples/hubert/simple_kmeans/` (dump features → learn k-means → dump labels) and
`measure_teacher_quality.py`, on `datasets` and a `HubertPseudoLabeler` checkpoint that reproduces the labels.
"""

from .collator import CROP_OFFSET_COLUMN, DataCollatorForHubertPretraining
from .features import (
    FeatureStore,
    FeatureStoreWriter,
    dump_features,
    hubert_layer_features,
    iter_waveforms,
    mfcc_features,
    prepare_audio_column,
)
from .kmeans import (
    KMeansResult,
    assign_clusters,
    faiss_gpu_available,
    fit_kmeans,
    load_fairseq_kmeans,
    mean_squared_distance,
    sample_frames,
)
from .metrics import (
    alignment_to_frames,
    cluster_purity,
    contingency_table,
    label_quality,
    paired_frames,
    phone_inventory,
    phone_normalized_mutual_information,
    phone_purity,
)
from .stages import (
    LABELS_COLUMN,
    PseudoLabelArguments,
    PseudoLabelResult,
    StageResult,
    attach_labels,
    build_labeler,
    crop_labels,
    fit_labeler,
    is_stage_complete,
    label_info,
    label_split,
    load_label_info,
    measure_label_quality,
    run_pseudo_label_iteration,
    run_stage,
)

__all__ = [
    "CROP_OFFSET_COLUMN",
    "LABELS_COLUMN",
    "DataCollatorForHubertPretraining",
    "FeatureStore",
    "FeatureStoreWriter",
    "KMeansResult",
    "PseudoLabelArguments",
    "PseudoLabelResult",
    "StageResult",
    "alignment_to_frames",
    "assign_clusters",
    "attach_labels",
    "build_labeler",
    "cluster_purity",
    "contingency_table",
    "crop_labels",
    "dump_features",
    "faiss_gpu_available",
    "fit_kmeans",
    "fit_labeler",
    "hubert_layer_features",
    "is_stage_complete",
    "iter_waveforms",
    "label_info",
    "label_quality",
    "label_split",
    "load_fairseq_kmeans",
    "load_label_info",
    "mean_squared_distance",
    "measure_label_quality",
    "mfcc_features",
    "paired_frames",
    "phone_inventory",
    "phone_normalized_mutual_information",
    "phone_purity",
    "prepare_audio_column",
    "run_pseudo_label_iteration",
    "run_stage",
    "sample_frames",
]
