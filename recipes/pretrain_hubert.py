#!/usr/bin/env python
"""HuBERT pretraining (Hsu et al. 2021): k-means pseudo-labels → masked prediction → relabel with the new model.

Iteration 1 clusters 39-d MFCCs (13 + Δ + ΔΔ) of the training split into K=100 clusters, labels every split and
trains a `HubertForPreTraining` to predict the labels of masked frames. Iteration i > 1 clusters hidden layer L of
iteration i-1's model (`--label_layer`, default from its depth N: N // 2, i.e. 6 of BASE's 12 as in the paper and 1
of `tiny`'s 2; 9 for N >= 24) into K=500 clusters, relabels, and trains a fresh model on the new labels (fresh, as in
the paper §IV-C and fairseq's recipe, unless `--init_from` or `--continue_iterations`, which start each iteration
from the encoder of the model its labels came from).

This script is the command line of `hf_speech_cl.hubert_iteration.HubertIterator`, whose docstring describes the
method, the layout of `--output_dir` (`iteration-{i}/` with settings, features, labeler, labels, metrics and model;
the last iteration's model at the root, loadable by `AutoModelForPreTraining` and stock `HubertForCTC`) and how to
run one iteration or one stage from a notebook.

With no arguments both iterations (300 updates each) run on the offline `synthetic-librispeech` corpus (built on
first use) with the machine's encoder preset (`cpu` without CUDA, `gpu` with it).

Every stage resumes: a rerun of the same command skips finished stages (each is published atomically, with a
completion marker, so an interrupted one restarts cleanly) and training continues from its newest checkpoint.

The training flags (`--max_steps`, `--learning_rate`, `--save_steps`, ...) apply to EACH iteration's training:
`--iterations 2 --max_steps 300` trains 2 x 300 updates; `--iteration_max_steps 3000,1000` trains 3000 then 1000,
and with `--continue_iterations` the 1000 continue the 3000-update encoder instead of starting a fresh one.

Random crops (`--max_train_crop_s`) cut the labels with the audio (fairseq `collater_frm_label` offsets).

Continued pretraining (`--init_from PATH_OR_HUB_ID`): a HuBERT checkpoint (stock `HubertModel` / `HubertForCTC`, e.g.
facebook/hubert-base-ls960, or one of this recipe's outputs) plays iteration 1's model, so the run starts at
iteration 2: k-means on layer `--label_layer` of that checkpoint (K: the second value of `--num_clusters`, 500 by
default), then masked prediction that starts from the checkpoint's encoder weights with a new prediction head
(`final_proj`, `label_embs_concat`; the log and the card say what was newly initialised). With `--iterations 3` and
more, each further iteration also continues from the model its labels came from. The architecture is the
checkpoint's: `--model_size` / `--config_overrides` that change it (hidden size, conv layout, depth, ...) are an error
naming the fields; the input is normalised as the checkpoint's `preprocessor_config.json` says (if it has one).
Note that facebook/hubert-base-ls960 is itself the paper's iteration-2 BASE model; the paper's next targets (for
LARGE) came from its layer 9: `--label_layer 9`.

Examples:
    accelerate launch recipes/pretrain_hubert.py
    accelerate launch recipes/pretrain_hubert.py --iterations 3 --num_clusters 100,500,500 --label_layer 1
    accelerate launch recipes/pretrain_hubert.py --init_from facebook/hubert-base-ls960 --label_layer 9 \\
        --dataset_name openslr/librispeech_asr --dataset_config clean --train_split train.100 --max_steps 20000
    accelerate launch recipes/pretrain_hubert.py --dataset_name openslr/librispeech_asr --dataset_config clean \\
        --train_split train.100 --eval_split validation --model_size base --mixed_precision bf16 \\
        --kmeans_max_dump_utterances 20000 --max_steps 100000
    torchrun --nproc_per_node 2 recipes/pretrain_hubert.py      # labels made once (main process), then DDP
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import HfArgumentParser

from hf_speech_cl.data import DataArguments
from hf_speech_cl.finetuning import PhoneProbeArguments
from hf_speech_cl.hubert_iteration import HubertArguments, HubertIterator
from hf_speech_cl.pseudo_labels import run_pseudo_label_iteration
from hf_speech_cl.training import PretrainingArguments, push_folder_to_hub, train

logger = logging.getLogger("pretrain_hubert")


def main(argv: list[str] | None = None) -> Path:
    parser = HfArgumentParser(
        (HubertArguments, DataArguments, PretrainingArguments, PhoneProbeArguments), description=__doc__
    )
    parser.set_defaults(
        output_dir="outputs/hubert",
        max_steps=300,
        per_device_train_batch_size=8,
        learning_rate=2e-3,  # tiny preset, 300 updates: 5e-4 barely moved the loss (measured, see the README)
        max_train_crop_s=2.0,
        save_steps=100,
        logging_steps=10,
    )
    hubert_args, data_args, args, probe_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    iterator = HubertIterator(
        hubert_args,
        data_args,
        args,
        probe_args,
        logger=logger,
        # this module's names, looked up now: tests replace them on the recipe module
        label_fn=run_pseudo_label_iteration,
        train_fn=train,
        push_fn=push_folder_to_hub,
    )
    return iterator.run()


if __name__ == "__main__":
    main(sys.argv[1:])
