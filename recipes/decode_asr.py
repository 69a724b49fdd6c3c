#!/usr/bin/env python
"""Decode a fine-tuned CTC model with a lexicon-constrained beam search and a word language model.

The model of `recipes/finetune_asr.py` spells characters; greedy CTC decoding leaves most words with a wrong letter.
This recipe decodes the validation and test splits the way the wav2vec 2.0 paper's "4-gram LM" rows do (Baevski et
al. 2020 §4.4; fairseq `examples/speech_recognition/w2l_decoder.py`): a beam search that only outputs words of a
lexicon, scored by the acoustic model plus a weighted word LM and a word insertion score, the two weights tuned on the
validation split and then applied to the test split. Offline parts (`hf_speech_cl.finetuning.decoding`):
`torchaudio`'s flashlight-text `ctc_decoder`, a lexicon of the training transcripts' words plus Debian's word list,
and an interpolated Kneser-Ney word bigram of the training transcripts (the transcripts of `--train_minutes` if the
model was fine-tuned on a subset: pass the same `--train_minutes` and `--seed`).

Greedy and beam-search WER/CER of the same utterances are printed and written as JSON to `--output_file` (default:
`lm_decoding_results.json` in the model folder, written atomically).

Examples:
    python recipes/decode_asr.py --model_name_or_path outputs/asr
    python recipes/decode_asr.py --model_name_or_path outputs/asr --max_eval_samples 100 --beam_size 100
    python recipes/decode_asr.py --model_name_or_path outputs/asr-10min --train_minutes 10 --seed 0
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import hf_speech_cl  # noqa: F401  (first: a mismatched torch stack is a clear error, not a linker trace)

# isort: split

from transformers import AutoModelForCTC, HfArgumentParser

from hf_speech_cl.data import AudioCollator, DataArguments, make_dataloader
from hf_speech_cl.finetuning import (
    DEFAULT_CHARS_TO_REMOVE,
    DataCollatorCTC,
    ctc_tokenizer_for,
    encoder_min_input_samples,
    load_ctc_tokenizer,
    load_feature_extractor,
    normalize_transcript,
)
from hf_speech_cl.finetuning.data import build_finetuning_datasets, column_values
from hf_speech_cl.finetuning.decoding import LMDecodingArguments, lm_decode_splits
from hf_speech_cl.training.checkpointing import atomic_write_text

logger = logging.getLogger("decode_asr")


@dataclass
class DecodeArguments:
    model_name_or_path: str = field(
        metadata={
            "help": "A fine-tuned CTC model folder of recipes/finetune_asr.py (model, vocab.json, processor), or one "
            "of its checkpoint-N/ or best_model/ folders (the vocabulary is then rebuilt from the training transcripts)."
        }
    )
    test_split: str = field(default="test", metadata={"help": "Split decoded with the tuned weights; `none` skips."})
    seed: int = field(
        default=42,
        metadata={
            "help": "Seed of the --train_minutes subset (the LM's text): the fine-tuning run's --seed. Default: 42."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Clips per forward pass. Default: 8."})
    vocab_min_count: int = field(
        default=1, metadata={"help": "As in fine-tuning, when the vocabulary has to be rebuilt. Default: 1."}
    )
    chars_to_remove: str = field(
        default=DEFAULT_CHARS_TO_REMOVE,
        metadata={"help": "Regular expression of characters deleted from transcripts (as in fine-tuning)."},
    )
    output_file: str | None = field(
        default=None, metadata={"help": "JSON results. Default: lm_decoding_results.json in the model folder."}
    )


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((DecodeArguments, LMDecodingArguments, DataArguments), description=__doc__)
    args, lm_args, data_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    start = time.time()
    path = args.model_name_or_path
    model = AutoModelForCTC.from_pretrained(path)
    # a checkpoint-N/ or best_model/ folder holds only the model: its run folder (the parent) has the processor
    run_folder = next((p for p in (Path(path), Path(path).parent) if (p / "vocab.json").is_file()), None)
    feature_extractor = load_feature_extractor(str(run_folder or path), data_args.sampling_rate)
    text = data_args.text_column
    test_split = None if args.test_split.lower() in ("", "none") else args.test_split
    splits = build_finetuning_datasets(
        data_args,
        sampling_rate=feature_extractor.sampling_rate,
        min_input_samples=encoder_min_input_samples(path, None, 10),
        seed=args.seed,
        column=text,
        test_split=test_split,
    )
    if splits["validation"] is None:
        raise ValueError("The beam-search weights are tuned on the validation split: pass --eval_split")
    train_transcripts = [
        normalize_transcript(str(t), args.chars_to_remove) for t in column_values(splits["train"], text)
    ]
    tokenizer = load_ctc_tokenizer(run_folder) if run_folder is not None else None
    if tokenizer is None:
        # a checkpoint-N/ or best_model/ folder of a run: its vocabulary is the one fine-tuning built from the same
        # training transcripts (hf_speech_cl.finetuning.vocab.build_character_vocab is deterministic)
        tokenizer = ctc_tokenizer_for(None, train_transcripts, args.vocab_min_count)
        logger.warning("%s has no vocab.json: rebuilt the vocabulary from the training transcripts", path)
    if len(tokenizer) != model.config.vocab_size:
        raise ValueError(
            f"The vocabulary has {len(tokenizer)} tokens but the model's CTC head {model.config.vocab_size}: decode "
            "the run's output folder (with vocab.json) or pass the data flags of the fine-tuning run"
        )
    collator = DataCollatorCTC(
        AudioCollator(feature_extractor), tokenizer, text, args.chars_to_remove, return_text=True
    )
    loaders = {
        name: make_dataloader(splits[name], collator, args.batch_size, shuffle=False)
        if splits[name] is not None
        else None
        for name in ("validation", "test")
    }
    result = lm_decode_splits(model, tokenizer, train_transcripts, loaders["validation"], loaders["test"], lm_args)
    result.update(model=path, wall_time_s=time.time() - start, num_train_transcripts=len(train_transcripts))
    output = Path(args.output_file or Path(path) / "lm_decoding_results.json")
    atomic_write_text(output, json.dumps(result, indent=2) + "\n")
    for name in ("validation", "test"):
        if f"{name}_lm_wer" in result:
            print(
                f"{name}: greedy WER {result[f'{name}_greedy_wer']:.4f} CER {result[f'{name}_greedy_cer']:.4f} -> "
                f"beam search + LM WER {result[f'{name}_lm_wer']:.4f} CER {result[f'{name}_lm_cer']:.4f} "
                f"({result[f'{name}_num_utterances']} utterances)"
            )
    print(
        f"lm_weight {result['lm_weight']}, word_score {result['word_score']}, lexicon {result['lexicon_size']} "
        f"words; {result['wall_time_s']:.0f} s; results in {output}"
    )
    return result


if __name__ == "__main__":
    main()
