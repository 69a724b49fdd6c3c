"""Quality of frame pseudo-labels against phone alignments: phone purity, cluster purity, PNMI.

Definitions of Hsu et al. 2021 ("HuBERT", §IV-E), computed from the joint distribution p(y, z) of phone y and
label z over frames, as fairseq's `examples/hubert/measure_teacher_quality.py` does:

- phone purity  = E_z[max_y p(y|z)] = Σ_z max_y p(y, z)   (how pure each cluster is in phones; fairseq "ref pur")
- cluster purity = E_y[max_z p(z|y)] = Σ_y max_z p(y, z)   (how concentrated each phone is in one cluster; "hyp pur")
- PNMI = I(y; z) / H(y)   (phone-normalised mutual information: the fraction of phone uncertainty the labels remove)

Entropies in nats; terms with p = 0 contribute 0 (fairseq adds 1e-8 inside the logs instead).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "alignment_to_frames",
    "cluster_purity",
    "contingency_table",
    "label_quality",
    "paired_frames",
    "phone_inventory",
    "phone_normalized_mutual_information",
    "phone_purity",
]

UNALIGNED = -1


def phone_inventory(alignments: Iterable[Sequence[Mapping[str, Any]]]) -> dict[str, int]:
    """`{phone: id}` over all phones of `alignments` (lists of `{phone, start, end}`), ids in sorted phone order."""
    phones = sorted({segment["phone"] for alignment in alignments for segment in alignment})
    return {phone: index for index, phone in enumerate(phones)}


def alignment_to_frames(
    alignment: Sequence[Mapping[str, Any]],
    frame_rate: float,
    phone_to_id: Mapping[str, int],
    num_frames: int | None = None,
    *,
    frame_offset: float | None = None,
) -> np.ndarray:
    """Frame-level phone ids of one utterance's phone alignment.

    Frame t stands for time `frame_offset + t / frame_rate` seconds and takes the phone whose `[start, end)` holds
    that time, `UNALIGNED` (-1) if none does (ignored by the metrics).

    Args:
        alignment: `[{phone: str, start: float s, end: float s}, ...]` (the corpus column `phone_alignment`).
        frame_rate: Hz (the label rate).
        phone_to_id: from `phone_inventory`.
        num_frames: how many frames to return; default: up to the end of the last phone.
        frame_offset: seconds; default half a frame period (the middle of the hop interval frame t represents).
            The labeler's frames are centred on their analysis window: pass its config's `frame_center_seconds`
            (12.5 ms for 25 ms MFCC windows and HuBERT BASE's 400-sample receptive field) to align on that, as
            `stages.run_pseudo_label_iteration` does.

    Returns:
        `(num_frames,)` int64.

    Raises:
        KeyError: a phone missing from `phone_to_id`.
    """
    if frame_offset is None:
        frame_offset = 0.5 / frame_rate
    starts = np.asarray([float(s["start"]) for s in alignment], dtype=np.float64)
    ends = np.asarray([float(s["end"]) for s in alignment], dtype=np.float64)
    ids = np.asarray([phone_to_id[s["phone"]] for s in alignment], dtype=np.int64)
    if num_frames is None:
        num_frames = int(np.ceil((ends.max() - frame_offset) * frame_rate)) if len(ends) else 0
        num_frames = max(num_frames, 0)
    times = frame_offset + np.arange(num_frames) / frame_rate
    if not len(ids):
        return np.full(num_frames, UNALIGNED, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, ends, ids = starts[order], ends[order], ids[order]
    segment = np.searchsorted(starts, times, side="right") - 1  # last segment starting at or before t
    inside = (segment >= 0) & (times < ends[np.clip(segment, 0, None)])
    return np.where(inside, ids[np.clip(segment, 0, None)], UNALIGNED)


def paired_frames(
    labels: Iterable[Sequence[int] | np.ndarray], phones: Iterable[Sequence[int] | np.ndarray]
) -> tuple[np.ndarray, np.ndarray, int]:
    """Concatenate per-utterance label and phone sequences, each pair cut to its shorter length (fairseq
    `comp_joint_prob`).

    Returns:
        `phones (frames,)`, `labels (frames,)` int64 and the summed absolute length difference in frames.
    """
    phone_parts, label_parts, difference = [], [], 0
    for utterance_labels, utterance_phones in zip(labels, phones, strict=True):
        utterance_labels = np.asarray(utterance_labels, dtype=np.int64)
        utterance_phones = np.asarray(utterance_phones, dtype=np.int64)
        length = min(len(utterance_labels), len(utterance_phones))
        difference += abs(len(utterance_labels) - len(utterance_phones))
        phone_parts.append(utterance_phones[:length])
        label_parts.append(utterance_labels[:length])
    if not phone_parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    return np.concatenate(phone_parts), np.concatenate(label_parts), difference


def contingency_table(phones: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Counts `(num_phones, num_labels)` of (phone, label) pairs over frames; frames where either is negative
    (unaligned phone, label -100) are left out. Rows/columns: the distinct values in sorted order.

    Raises:
        ValueError: `phones` and `labels` differ in shape, or no frame is left.
    """
    phones, labels = np.asarray(phones).ravel(), np.asarray(labels).ravel()
    if phones.shape != labels.shape:
        raise ValueError(f"`phones` and `labels` must have the same shape, got {phones.shape} and {labels.shape}.")
    keep = (phones >= 0) & (labels >= 0)
    if not keep.any():
        raise ValueError("No frame has both a phone and a label.")
    _, phone_index = np.unique(phones[keep], return_inverse=True)
    _, label_index = np.unique(labels[keep], return_inverse=True)
    table = np.zeros((phone_index.max() + 1, label_index.max() + 1), dtype=np.int64)
    np.add.at(table, (phone_index, label_index), 1)
    return table


def _joint(phones: np.ndarray, labels: np.ndarray) -> np.ndarray:
    table = contingency_table(phones, labels).astype(np.float64)
    return table / table.sum()


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def phone_purity(phones: np.ndarray, labels: np.ndarray) -> float:
    """Σ_z max_y p(y, z): the average, over frames, of the share of the frame's cluster taken by its top phone."""
    return float(_joint(phones, labels).max(axis=0).sum())


def cluster_purity(phones: np.ndarray, labels: np.ndarray) -> float:
    """Σ_y max_z p(y, z): the average, over frames, of the share of the frame's phone taken by its top cluster."""
    return float(_joint(phones, labels).max(axis=1).sum())


def phone_normalized_mutual_information(phones: np.ndarray, labels: np.ndarray) -> float:
    """PNMI = I(phone; label) / H(phone), in [0, 1]: 1 when the labels determine the phone.

    Raises:
        ValueError: only one phone occurs (H(phone) = 0).
    """
    p_xy = _joint(phones, labels)
    h_phone = _entropy(p_xy.sum(axis=1))
    if h_phone == 0:
        raise ValueError("PNMI is undefined when a single phone occurs (H(phone) = 0).")
    return _mutual_information(p_xy) / h_phone


def _mutual_information(p_xy: np.ndarray) -> float:
    p_x = p_xy.sum(axis=1, keepdims=True)
    p_y = p_xy.sum(axis=0, keepdims=True)
    nonzero = p_xy > 0
    return float((p_xy[nonzero] * np.log(p_xy[nonzero] / (p_x @ p_y)[nonzero])).sum())


def label_quality(phones: np.ndarray, labels: np.ndarray) -> dict[str, float | int]:
    """All of fairseq `measure_teacher_quality.py`'s frame statistics in one pass.

    Returns:
        `phone_purity`, `cluster_purity`, `pnmi`, `mutual_information`, `phone_entropy`, `label_entropy` (nats),
        `num_frames`, `num_phones`, `num_labels` (distinct values seen).
    """
    table = contingency_table(phones, labels)
    p_xy = table / table.sum()
    h_phone = _entropy(p_xy.sum(axis=1))
    mutual_information = _mutual_information(p_xy)
    return {
        "phone_purity": float(p_xy.max(axis=0).sum()),
        "cluster_purity": float(p_xy.max(axis=1).sum()),
        "pnmi": mutual_information / h_phone if h_phone > 0 else float("nan"),
        "mutual_information": mutual_information,
        "phone_entropy": h_phone,
        "label_entropy": _entropy(p_xy.sum(axis=0)),
        "num_frames": int(table.sum()),
        "num_phones": int(p_xy.shape[0]),
        "num_labels": int(p_xy.shape[1]),
    }
