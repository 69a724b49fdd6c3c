"""Run a recipe in this process and SIGKILL it at a chosen point (used by tests/test_fault_tolerance.py).

    python tests/fault_driver.py RECIPE KILL -- RECIPE_ARGS...
    torchrun --nproc_per_node 2 tests/fault_driver.py RECIPE none -- RECIPE_ARGS...

KILL is `none`, `update:K` (killed in update K+1, after K updates are done: its forward pass ran, its backward
pass and optimizer step did not) or `save:K` (killed inside the write of `checkpoint-K`: the files are in the temporary folder,
which is never renamed). With `FAULT_DRIVER_DUMP_PARAMS=DIR`, every process saves its parameters after `train` to
`DIR/rank{i}.pt`. The kill is `os.kill(os.getpid(), SIGKILL)`: no exception, no `finally`, no flush.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    recipe_name, kill = sys.argv[1], sys.argv[2]
    recipe_args = sys.argv[sys.argv.index("--") + 1 :]
    from accelerate import Accelerator

    if kill.startswith("update:"):
        at = int(kill.split(":")[1])
        original_backward = Accelerator.backward
        calls = [0]

        def backward_or_die(self, loss, **kwargs):
            # one micro-batch per update in these tests: backward call at+1 is update at+1's
            if calls[0] == at * self.gradient_accumulation_steps:
                _die()
            calls[0] += 1
            return original_backward(self, loss, **kwargs)

        Accelerator.backward = backward_or_die
    elif kill.startswith("save:"):
        at = int(kill.split(":")[1])
        original_save = Accelerator.save_state

        def save_then_die(self, output_dir=None, **kwargs):
            out = original_save(self, output_dir, **kwargs)
            if Path(output_dir).name == f".tmp-checkpoint-{at}":
                _die()
            return out

        Accelerator.save_state = save_then_die
    elif kill != "none":
        raise SystemExit(f"unknown kill spec {kill!r}")

    dump_dir = os.environ.get("FAULT_DRIVER_DUMP_PARAMS")
    if dump_dir:  # after training, every process saves its parameters (to compare the replicas)
        import torch

        import hf_speech_cl.training as training

        original_train = training.train

        def train_and_dump(model, *args, accelerator, **kwargs):
            result = original_train(model, *args, accelerator=accelerator, **kwargs)
            state = {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).named_parameters()}
            torch.save(state, Path(dump_dir) / f"rank{accelerator.process_index}.pt")
            return result

        training.train = train_and_dump

    spec = importlib.util.spec_from_file_location(recipe_name, ROOT / "recipes" / f"{recipe_name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[recipe_name] = module
    spec.loader.exec_module(module)
    module.main(recipe_args)


if __name__ == "__main__":
    main()
