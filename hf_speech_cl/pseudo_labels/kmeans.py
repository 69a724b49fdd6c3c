"""k-means for HuBERT pseudo-labels: two backends behind one function, plus batched nearest-centroid labelling.

- `"sklearn"`: `MiniBatchKMeans` with the settings of fairseq's `examples/hubert/simple_kmeans/learn_kmeans.py`
  (k-means++ init, `max_iter=100`, `batch_size=10000`, `tol=0`, `max_no_improvement=100`, `n_init=20`,
  `reassignment_ratio=0`).
- `"faiss"`: `faiss.Kmeans` (Lloyd iterations; on the GPU when faiss is built with GPU support and one is visible).

Both fit on the same sample of frames: the frames of `ceil(sample_fraction × utterances)` utterances drawn from a
memory-mapped `FeatureStore` (fairseq `--percent 0.1`: 10 % of the training set). Only that sample is held in RAM.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..models.hubert_pretraining import nearest_centroid
from .features import FeatureStore

__all__ = [
    "KMeansResult",
    "assign_clusters",
    "faiss_gpu_available",
    "fit_kmeans",
    "load_fairseq_kmeans",
    "mean_squared_distance",
    "sample_frames",
]

logger = logging.getLogger(__name__)

CENTROIDS_FILE = "centroids.npy"
KMEANS_INFO_FILE = "kmeans.json"

# fairseq examples/hubert/simple_kmeans/learn_kmeans.py argparse defaults
SKLEARN_DEFAULTS: dict[str, Any] = {
    "init": "k-means++",
    "max_iter": 100,
    "batch_size": 10000,
    "tol": 0.0,
    "max_no_improvement": 100,
    "n_init": 20,
    "reassignment_ratio": 0.0,
}
# faiss.Kmeans: as many Lloyd iterations as MiniBatchKMeans gets epochs; every sampled frame used
FAISS_DEFAULTS: dict[str, Any] = {"niter": 100, "nredo": 1}


@dataclass
class KMeansResult:
    """A fitted k-means model and how it was fitted.

    Attributes:
        centroids: `(n_clusters, dim)` float32.
        backend: `"faiss"` or `"sklearn"`.
        fit_seconds: wall time of the fit alone; `sample_seconds`: of reading the sample from disk.
        inertia: mean squared distance of a sampled frame to its nearest centroid (same formula for both backends).
        num_frames / num_utterances: size of the fit sample.
        params: the backend's arguments.
    """

    centroids: np.ndarray
    backend: str
    fit_seconds: float
    sample_seconds: float
    inertia: float
    num_frames: int
    num_utterances: int
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.centroids.shape[0])

    def summary(self) -> dict[str, Any]:
        """Everything but the centroids (JSON-serialisable)."""
        out = {k: v for k, v in asdict(self).items() if k != "centroids"}
        out["n_clusters"] = self.n_clusters
        out["dim"] = int(self.centroids.shape[1])
        return out

    def save(self, path: str | Path) -> None:
        """Write `centroids.npy` and `kmeans.json` into folder `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / CENTROIDS_FILE, self.centroids)
        (path / KMEANS_INFO_FILE).write_text(json.dumps(self.summary(), indent=2, default=str))

    @classmethod
    def load(cls, path: str | Path) -> KMeansResult:
        path = Path(path)
        summary = json.loads((path / KMEANS_INFO_FILE).read_text())
        summary.pop("n_clusters", None)
        summary.pop("dim", None)
        return cls(centroids=np.load(path / CENTROIDS_FILE), **summary)


def faiss_gpu_available() -> bool:
    """Whether the installed faiss has GPU support and sees a GPU (False for `faiss-cpu`)."""
    try:
        import faiss
    except ImportError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def sample_frames(
    features: FeatureStore | np.ndarray, sample_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, int]:
    """The k-means training sample: frames of a random `sample_fraction` of the utterances (whole utterances).

    Args:
        features: a `FeatureStore`, or an in-memory `(frames, dim)` array (then frames are sampled).

    Returns:
        `(frames, dim)` float32 C-contiguous array and the number of utterances (or frames) drawn.
    """
    if isinstance(features, FeatureStore):
        utterances = features.sample_utterances(sample_fraction, seed)
        return features.gather(utterances), len(utterances)
    features = np.asarray(features, dtype=np.float32)
    if not 0 < sample_fraction <= 1:
        raise ValueError(f"`sample_fraction` must lie in (0, 1], got {sample_fraction}.")
    if sample_fraction < 1:
        count = max(1, math.ceil(len(features) * sample_fraction))
        features = features[np.sort(np.random.default_rng(seed).choice(len(features), size=count, replace=False))]
    return np.ascontiguousarray(features), len(features)


def fit_kmeans(
    features: FeatureStore | np.ndarray,
    n_clusters: int,
    backend: Literal["faiss", "sklearn"] = "faiss",
    sample_fraction: float = 0.1,
    seed: int = 0,
    *,
    use_gpu: bool | None = None,
    verbose: bool = False,
    **backend_kwargs: Any,
) -> KMeansResult:
    """Fit k-means with `n_clusters` centroids on a sample of `features`.

    Args:
        features: a `FeatureStore` (sampled by utterance, streamed from the memory map) or a `(frames, dim)` array.
        n_clusters: K.
        backend: `"faiss"` (`faiss.Kmeans`, defaults `FAISS_DEFAULTS`) or `"sklearn"` (`MiniBatchKMeans`, fairseq's
            `SKLEARN_DEFAULTS`).
        sample_fraction: fraction of utterances fitted on (fairseq: 0.1).
        seed: sampling and initialisation seed.
        use_gpu: faiss only; default: when `faiss_gpu_available()`.
        backend_kwargs: override backend arguments (`max_iter`, `n_init`, ... / `niter`, `nredo`, ...).

    Returns:
        `KMeansResult` with the centroids, fit time and inertia on the sample.

    Raises:
        ValueError: unknown backend, or fewer sampled frames than clusters.
    """
    if backend not in ("faiss", "sklearn"):
        raise ValueError(f"`backend` must be 'faiss' or 'sklearn', got {backend!r}.")
    started = time.perf_counter()
    sample, drawn = sample_frames(features, sample_fraction, seed)
    sample_seconds = time.perf_counter() - started
    if len(sample) < n_clusters:
        raise ValueError(
            f"The k-means sample has {len(sample)} frames, fewer than n_clusters={n_clusters}; raise "
            f"`sample_fraction` (now {sample_fraction}) or lower K."
        )
    logger.info("k-means (%s): %d clusters on %d frames × %d", backend, n_clusters, len(sample), sample.shape[1])

    started = time.perf_counter()
    if backend == "sklearn":
        from sklearn.cluster import MiniBatchKMeans

        params = {**SKLEARN_DEFAULTS, **backend_kwargs}
        model = MiniBatchKMeans(
            n_clusters=n_clusters, random_state=seed, compute_labels=False, verbose=int(verbose), **params
        )
        model.fit(sample)
        centroids = model.cluster_centers_
    else:
        import faiss

        if use_gpu is None:
            use_gpu = faiss_gpu_available()
        params = {**FAISS_DEFAULTS, **backend_kwargs}
        params.setdefault("max_points_per_centroid", math.ceil(len(sample) / n_clusters) + 1)  # no subsampling
        model = faiss.Kmeans(sample.shape[1], n_clusters, seed=seed, gpu=bool(use_gpu), verbose=verbose, **params)
        model.train(sample)
        centroids = model.centroids
        params["gpu"] = bool(use_gpu)
    fit_seconds = time.perf_counter() - started

    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    inertia = mean_squared_distance(sample, centroids)
    logger.info("k-means (%s) fitted in %.2f s, inertia %.4f", backend, fit_seconds, inertia)
    return KMeansResult(
        centroids=centroids,
        backend=backend,
        fit_seconds=fit_seconds,
        sample_seconds=sample_seconds,
        inertia=inertia,
        num_frames=len(sample),
        num_utterances=drawn,
        seed=seed,
        params=params,
    )


def assign_clusters(
    features: np.ndarray | torch.Tensor,
    centroids: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 1 << 16,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Nearest-centroid id of every frame, `batch_size` frames at a time (the labeler's own arithmetic).

    Args:
        features: `(frames, dim)`.
        centroids: `(K, dim)`.
        device: where distances are computed (default CPU).

    Returns:
        `(frames,)` int64.
    """
    device = torch.device(device or "cpu")
    centroids = torch.as_tensor(np.asarray(centroids, dtype=np.float32), device=device)
    out = np.empty(len(features), dtype=np.int64)
    for start in range(0, len(features), batch_size):
        block = torch.from_numpy(np.array(features[start : start + batch_size], dtype=np.float32)).to(device)
        out[start : start + len(block)] = nearest_centroid(block, centroids).cpu().numpy()
    return out


def mean_squared_distance(features: np.ndarray, centroids: np.ndarray, *, batch_size: int = 1 << 16) -> float:
    """Mean over frames of the squared Euclidean distance to the nearest centroid (k-means inertia / frames)."""
    if len(features) == 0:
        return float("nan")
    centroids_t = torch.as_tensor(np.asarray(centroids, dtype=np.float64))
    total = 0.0
    for start in range(0, len(features), batch_size):
        block = torch.as_tensor(np.asarray(features[start : start + batch_size], dtype=np.float64))
        total += float(torch.cdist(block, centroids_t).amin(dim=1).pow(2).sum())
    return total / len(features)


def load_fairseq_kmeans(path: str | Path) -> np.ndarray:
    """Centroids `(K, dim)` of a k-means model saved by fairseq's `learn_kmeans.py` (a joblib-pickled scikit-learn
    `MiniBatchKMeans`, e.g. the published `hubert_base_ls960_L9_km500.bin`), for `HubertPseudoLabeler.set_centroids`.

    Unpickling runs code from the file: load only files you trust.
    """
    import joblib

    model = joblib.load(path)
    return np.ascontiguousarray(model.cluster_centers_, dtype=np.float32)
