"""SimCLR under DistributedDataParallel: two CPU processes (gloo) share negatives and stay in sync.

Each process holds a slice of a global batch of clips. With `gather_negatives_across_processes=True` the NT-Xent
candidates of every process are gathered, so (with equal slices) the mean of the per-process losses equals the loss
of one process over the concatenated global batch, and the DDP-averaged gradient equals that single-process
gradient. With unequal slices (a short last batch on one process) every anchor still sees the global candidates.
"""

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_simclr_model import TINY_BACKBONE  # the same tiny encoder as the single-process tests
from torch.nn.parallel import DistributedDataParallel

from hf_speech_cl.models.simclr_audio import SimCLRAudioConfig, SimCLRAudioForPreTraining

WORLD_SIZE = 2
NUM_SAMPLES = 1200


def build_model() -> SimCLRAudioForPreTraining:
    # layer norm in the projection head: batch-norm statistics would differ between a local and the global batch
    config = SimCLRAudioConfig(
        backbone_config=dict(TINY_BACKBONE),
        projection_dim=8,
        projection_norm="layer_norm",
        gather_negatives_across_processes=True,
    )
    torch.manual_seed(0)
    return SimCLRAudioForPreTraining(config)


def global_views(num_clips: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    view1 = torch.randn(num_clips, NUM_SAMPLES, generator=generator)
    return view1, view1 + 0.5 * torch.randn(view1.shape, generator=generator)


def local_batch(view1: torch.Tensor, view2: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    return torch.cat([view1[start:stop], view2[start:stop]])  # (2n, T), batch convention


def flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        results = {}
        model = build_model()
        ddp = DistributedDataParallel(model)

        # equal slices: 3 clips per process
        view1, view2 = global_views(6)
        inputs = local_batch(view1, view2, 3 * rank, 3 * rank + 3)
        out = ddp(inputs)
        out.loss.backward()
        results["loss"] = out.loss.detach()
        results["grad"] = flat_grad(model)
        with torch.no_grad():
            model.config.gather_negatives_across_processes = False
            results["local_loss"] = model(inputs).loss
            model.config.gather_negatives_across_processes = True

        # unequal slices: 3 clips on rank 0, 2 on rank 1
        view1, view2 = global_views(5)
        start, stop = (0, 3) if rank == 0 else (3, 5)
        with torch.no_grad():
            uneven = model(local_batch(view1, view2, start, stop))
        results["uneven_loss"] = uneven.loss
        results["uneven_anchors"] = 2 * (stop - start)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # neither rank tears gloo down while the other still talks to it (that hung once)
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_gradients_in_sync_and_equal_to_global_batch(rank_results):
    # DDP keeps the replicas' gradients identical
    torch.testing.assert_close(rank_results[0]["grad"], rank_results[1]["grad"], atol=0, rtol=0)

    # one process over the concatenated global batch (torch.distributed not initialised here)
    model = build_model()
    view1, view2 = global_views(6)
    reference = model(torch.cat([view1, view2]))
    reference.loss.backward()
    mean_loss = sum(result["loss"] for result in rank_results) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, reference.loss.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(rank_results[0]["grad"], flat_grad(model), atol=1e-6, rtol=1e-4)


def test_each_process_sees_the_other_process_negatives(rank_results):
    for rank, result in enumerate(rank_results):
        # without gathering the loss has 4 instead of 10 negatives per anchor: smaller, and different
        assert result["local_loss"].item() < result["loss"].item()
        model = build_model()
        view1, view2 = global_views(6)
        with torch.no_grad():
            alone = model(local_batch(view1, view2, 3 * rank, 3 * rank + 3)).loss
        torch.testing.assert_close(result["local_loss"], alone, atol=1e-6, rtol=1e-5)


def test_unequal_batches_gather_all_candidates(rank_results):
    model = build_model()
    view1, view2 = global_views(5)
    with torch.no_grad():
        reference = model(torch.cat([view1, view2])).loss  # mean over all 10 anchors
    anchors = sum(result["uneven_anchors"] for result in rank_results)
    weighted = sum(result["uneven_loss"] * result["uneven_anchors"] for result in rank_results) / anchors
    torch.testing.assert_close(weighted, reference, atol=1e-6, rtol=1e-5)
