"""The offline corpora: schema, splits, durations, alignments, determinism, caching, missing engines, CLI."""

import re
import shutil

import datasets
import numpy as np
import pytest

from hf_speech_cl.data.synthetic import (
    CORPORA,
    PHONE_INVENTORY,
    PROSODY_LABELS,
    SPEECH_COMMANDS_LABELS,
    TINY_PARAMS,
    EngineNotFoundError,
    build_corpus,
    cli,
    corpora,
    corpus_folder,
    corpus_info,
    corpus_params,
    default_cache_dir,
    engines,
    load_corpus,
    text,
)
from hf_speech_cl.data.synthetic.phones import ESPEAK_IPA_TO_ARPABET, RADIO_TO_ARPABET, map_phone, normalize_alignment

SAMPLING_RATE = corpus_params("synthetic-librispeech").sampling_rate
SPLITS = ("train", "validation", "test")
FRICATIVES = {"s", "sh", "z", "f", "th", "ch"}
VOWELS = {"aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw"}


def _raw_rows(split: datasets.Dataset) -> list[dict]:
    return list(split.cast_column("audio", datasets.Audio(decode=False)))


def _decoded(split: datasets.Dataset):
    for row in split:
        audio = row["audio"]
        yield row, np.asarray(audio["array"], dtype=np.float32), audio["sampling_rate"]


# ------------------------------------------------------------------------------------------------- schema
def test_librispeech_schema_and_values(tiny_librispeech):
    assert set(tiny_librispeech) == set(SPLITS)
    train = tiny_librispeech["train"]
    assert train.column_names == [
        "file", "audio", "text", "speaker_id", "chapter_id", "id", "duration", "engine", "voice", "phone_alignment",
    ]  # fmt: skip
    features = train.features
    assert features["audio"].sampling_rate == SAMPLING_RATE
    assert features["speaker_id"].dtype == features["chapter_id"].dtype == "int64"
    assert features["duration"].dtype == "float32"
    assert isinstance(features["phone_alignment"], datasets.List)
    assert {k: v.dtype for k, v in features["phone_alignment"].feature.items()} == {
        "phone": "string", "start": "float32", "end": "float32",
    }  # fmt: skip
    assert len(train) >= 20 and len(set(train["speaker_id"])) >= 4
    assert set(train["engine"]) == {"espeak-ng", "flite", "festival"}
    for row, audio, rate in _decoded(train):
        assert rate == SAMPLING_RATE and audio.ndim == 1
        assert row["duration"] == pytest.approx(len(audio) / rate, abs=1e-4)
        assert 0.5 < row["duration"] < 15
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", row["text"]), row["text"]
        assert row["id"] == f"{row['speaker_id']}-{row['chapter_id']}-{row['id'][-4:]}"
        assert row["file"].endswith(row["id"] + ".flac")
        frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)  # 10 ms
        assert np.abs(frames).max(axis=1).min() > 0  # dithered: no frame of digital zero
        assert 0.01 < np.abs(audio).max() <= 1.0


def test_librispeech_alignments_fit_audio_and_follow_it(tiny_librispeech):
    energy = {"sil": [], "speech": []}
    crossings = {"fricative": [], "vowel": []}
    for split in SPLITS:
        for row, audio, rate in _decoded(tiny_librispeech[split]):
            segments = row["phone_alignment"]
            assert segments[0]["start"] == 0 and segments[-1]["end"] == pytest.approx(row["duration"], abs=1e-5)
            for previous, segment in zip(segments, segments[1:]):
                assert previous["end"] == segment["start"]  # sorted, contiguous, non-overlapping
            for segment in segments:
                assert segment["phone"] in PHONE_INVENTORY
                assert 0 <= segment["start"] < segment["end"] <= row["duration"] + 1e-6
                piece = audio[int(segment["start"] * rate) : int(segment["end"] * rate)]
                if len(piece) < rate // 100:
                    continue
                energy["sil" if segment["phone"] == "sil" else "speech"].append(np.sqrt(np.mean(piece**2)))
                zcr = np.mean(np.abs(np.diff(np.sign(piece))) > 0)
                if segment["phone"] in FRICATIVES:
                    crossings["fricative"].append(zcr)
                elif segment["phone"] in VOWELS:
                    crossings["vowel"].append(zcr)
    # the timings must describe the audio: silences are quiet, fricatives noisier than vowels
    assert np.median(energy["sil"]) < 0.2 * np.median(energy["speech"])
    assert np.median(crossings["fricative"]) > 2 * np.median(crossings["vowel"])


def test_speech_commands_schema_and_clips(tiny_speech_commands):
    train = tiny_speech_commands["train"]
    assert train.column_names == ["file", "audio", "label", "speaker_id", "id", "duration"]
    assert train.features["label"].names == list(SPEECH_COMMANDS_LABELS)
    assert train.features["audio"].sampling_rate == SAMPLING_RATE
    silence = SPEECH_COMMANDS_LABELS.index("_silence_")
    for split in SPLITS:
        labels = tiny_speech_commands[split]["label"]
        assert set(labels) == set(range(len(SPEECH_COMMANDS_LABELS)))  # every class in every split
        for row, audio, rate in _decoded(tiny_speech_commands[split]):
            assert len(audio) == rate and row["duration"] == 1.0  # exactly 1 s
            assert (row["speaker_id"] == -1) == (row["label"] == silence)
            word = row["file"].split("/")[0]
            label = SPEECH_COMMANDS_LABELS[row["label"]]
            assert word == label or label in ("_unknown_", "_silence_")


def test_prosody_schema_and_classes_differ_only_in_prosody(tiny_prosody):
    train = tiny_prosody["train"]
    assert train.column_names == ["file", "audio", "label", "text", "speaker_id", "id", "duration"]
    assert train.features["label"].names == list(PROSODY_LABELS) == ["neutral", "happy", "sad", "angry"]
    assert "not emotional speech" in train.info.description.lower()
    by_reading: dict = {}
    for split in SPLITS:
        for row, audio, _ in _decoded(tiny_prosody[split]):
            level = np.sqrt(np.mean(audio**2))
            by_reading.setdefault((row["speaker_id"], row["text"]), {})[PROSODY_LABELS[row["label"]]] = (
                row["duration"],
                level,
            )
    for readings in by_reading.values():
        assert set(readings) == set(PROSODY_LABELS)  # each sentence in all four classes by one speaker
    sad_slower = [r["sad"][0] > r["angry"][0] for r in by_reading.values()]
    angry_louder = [r["angry"][1] > r["sad"][1] for r in by_reading.values()]
    assert np.mean(sad_slower) > 0.8 and np.mean(angry_louder) > 0.8


# ------------------------------------------------------------------------------------------------- splits
def _overlap(dataset_dict, column) -> list:
    values = {s: {v for v in dataset_dict[s][column] if v != -1} for s in SPLITS}
    return [values[a] & values[b] for a, b in (("train", "validation"), ("train", "test"), ("validation", "test"))]


def test_splits_are_disjoint_in_speakers_and_sentences(tiny_librispeech, tiny_speech_commands, tiny_prosody):
    for corpus in (tiny_librispeech, tiny_speech_commands, tiny_prosody):
        assert _overlap(corpus, "speaker_id") == [set(), set(), set()]
    for corpus in (tiny_librispeech, tiny_prosody):
        assert _overlap(corpus, "text") == [set(), set(), set()]
    unknown = SPEECH_COMMANDS_LABELS.index("_unknown_")
    words = {
        s: {r["file"].split("/")[0] for r in _raw_rows(tiny_speech_commands[s]) if r["label"] == unknown}
        for s in SPLITS
    }
    assert not (words["train"] & words["validation"]) and not (words["train"] & words["test"])


# ------------------------------------------------------------------------------------------------- cache
def test_same_seed_same_corpus_any_worker_count_and_cache_reuse(
    tiny_librispeech, corpus_cache_dir, tmp_path, monkeypatch
):
    params = TINY_PARAMS["synthetic-librispeech"]
    cached = build_corpus("synthetic-librispeech", cache_dir=corpus_cache_dir, **params)
    assert cached == corpus_folder("synthetic-librispeech", cache_dir=corpus_cache_dir, **params)
    assert default_cache_dir() == corpus_cache_dir  # the fixture sets HF_SPEECH_CL_CACHE
    # the fixture built with every core; an in-process rebuild elsewhere gives the same rows and the same key
    rebuilt = build_corpus("synthetic-librispeech", cache_dir=tmp_path, num_workers=1, **params)
    assert rebuilt.name == cached.name
    fresh = datasets.load_from_disk(str(rebuilt))
    for split in SPLITS:
        assert _raw_rows(fresh[split]) == _raw_rows(tiny_librispeech[split])

    # a second call reuses the folder without building; a changed parameter or seed gives another folder
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached corpus")

    monkeypatch.setattr(corpora, "_build", fail)
    assert build_corpus("synthetic-librispeech", cache_dir=tmp_path, **params) == rebuilt
    with pytest.raises(AssertionError, match="rebuilt"):
        build_corpus("synthetic-librispeech", cache_dir=tmp_path, **{**params, "eval_hours": 0.006})
    with pytest.raises(AssertionError, match="rebuilt"):
        build_corpus("synthetic-librispeech", cache_dir=tmp_path, seed=1, **params)
    info = corpus_info(rebuilt)
    assert info["params"]["train_hours"] == params["train_hours"] and info["splits"]["train"]["utterances"] == len(
        fresh["train"]
    )


def test_interrupted_build_leaves_nothing_to_reuse(tmp_path, monkeypatch):
    params = {**TINY_PARAMS["synthetic-prosody"], "engines": ("espeak-ng",)}
    calls = {"n": 0}
    real_render = corpora.render_task

    def render_then_die(task):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return real_render(task)

    monkeypatch.setattr(corpora, "render_task", render_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_corpus("synthetic-prosody", cache_dir=tmp_path, num_workers=1, **params)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    monkeypatch.setattr(corpora, "render_task", real_render)
    folder = build_corpus("synthetic-prosody", cache_dir=tmp_path, num_workers=1, **params)
    assert len(datasets.load_from_disk(str(folder))["train"]) == 3 * 2 * 4


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("engine", "missing", "package"),
    [("flite", "flite", "apt-get install flite"), ("festival", "festival", "apt-get install festival")],
)
def test_missing_engine_names_the_debian_package(engine, missing, package, tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == missing else real_which(name, *a, **k))
    with pytest.raises(EngineNotFoundError, match=package) as error:
        build_corpus("synthetic-prosody", cache_dir=tmp_path, engines=(engine,), **TINY_PARAMS["synthetic-prosody"])
    assert isinstance(error.value, RuntimeError) and f"{missing} not found" in str(error.value)
    assert not any(tmp_path.glob("synthetic-prosody-*"))


def test_missing_festival_voice_names_its_package(monkeypatch):
    monkeypatch.setattr(engines, "_festival_voices", lambda: frozenset({"kal_diphone"}))
    with pytest.raises(EngineNotFoundError, match="apt-get install festvox-us-slt-hts"):
        engines.check_voice(engines.Voice("festival", "cmu_us_slt_arctic_hts"))


def test_bad_parameters_are_refused_with_their_values():
    with pytest.raises(ValueError, match="unknown corpus 'librispeech'"):
        load_corpus("librispeech")
    with pytest.raises(ValueError, match=r"unknown size parameter\(s\) \['train_hourz'\]"):
        corpus_params("synthetic-librispeech", train_hourz=1)
    with pytest.raises(ValueError, match="train_hours and eval_hours must be > 0, got -1"):
        corpus_params("synthetic-librispeech", train_hours=-1)
    with pytest.raises(ValueError, match=r"engines must be a non-empty subset .* got \('mbrola',\)"):
        corpus_params("synthetic-prosody", engines=("mbrola",))
    with pytest.raises(ValueError, match=r"snr_db must be \(low, high\)"):
        corpus_params("synthetic-speech-commands", snr_db=(40, 10))


# ------------------------------------------------------------------------------------------------- phones, text
def test_every_engine_maps_onto_one_phone_inventory():
    assert map_phone("espeak-ng", "ɑːɹ") == ("aa", "r")
    assert map_phone("espeak-ng", "ð") == ("dh",) and map_phone("espeak-ng", "") == ("sil",)
    assert map_phone("espeak-ng", "ɒː") == ("aa",)  # unknown length variant: longest known prefix
    assert map_phone("flite", "ax") == ("ah",) and map_phone("festival", "pau") == ("sil",)
    assert map_phone("festival", "dx") == ("d",) and map_phone("flite", "ih1") == ("ih",)
    every = [p for table in (ESPEAK_IPA_TO_ARPABET, RADIO_TO_ARPABET) for names in table.values() for p in names]
    assert set(every) <= set(PHONE_INVENTORY)
    with pytest.raises(ValueError, match="unknown engine 'sapi'"):
        map_phone("sapi", "a")


def _flat(alignment):
    return [s["phone"] for s in alignment], [t for s in alignment for t in (s["start"], s["end"])]


def test_normalize_alignment_scales_clips_splits_and_fills():
    segments = [("", 0.2), ("ɑːɹ", 0.4), ("", 0.5), ("", 0.7)]
    phones, times = _flat(normalize_alignment("espeak-ng", segments, 0.6))  # the engine ran past the audio: clipped
    assert phones == ["sil", "aa", "r", "sil"]  # a two-phone name shares its span; pauses merge
    assert times == pytest.approx([0.0, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4, 0.6])
    phones, times = _flat(normalize_alignment("flite", [("pau", 0.2), ("hh", 0.4)], 0.5, time_scale=0.5))
    assert phones == ["sil", "hh", "sil"]  # warped by 0.5, then silence fills up to the audio's end
    assert times == pytest.approx([0.0, 0.1, 0.1, 0.2, 0.2, 0.5])
    with pytest.raises(ValueError, match="duration must be > 0 seconds, got 0"):
        normalize_alignment("flite", segments, 0)


def test_text_sources():
    harvard = text.harvard_sentences()
    assert len(harvard) == 720 and harvard[0].text == "The birch canoe slid on the smooth planks."
    assert "This plank was made for walking on." in {s.text for s in harvard}  # OCR slip repaired
    assert text.normalize_transcript('It\'s a well-known, "odd" case.') == "IT'S A WELL KNOWN ODD CASE"
    for sentence in text.fortune_sentences()[:500]:
        assert sentence.text.isascii() and not re.search(r"\d", sentence.text)
        assert 5 <= len(re.findall(r"[A-Za-z']+", sentence.text.replace("-", " "))) <= 16


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--corpus", "--train-hours", "--eval-hours", "--seed", "--num-workers", "--cache-dir", "--engines",
                 "--librispeech-train-speakers", "--speech-commands-train-speakers", "--repeats", "--snr-db",
                 "--prosody-train-speakers", "--sentences-per-speaker"):  # fmt: skip
        assert flag in out
    assert all(name in out for name in CORPORA)


def test_cli_reports_a_cached_corpus(tiny_prosody, corpus_cache_dir, capsys):
    params = TINY_PARAMS["synthetic-prosody"]
    argv = ["--corpus", "synthetic-prosody", "--cache-dir", str(corpus_cache_dir), "-q",
            "--prosody-train-speakers", str(params["train_speakers"]), "--prosody-eval-speakers",
            str(params["eval_speakers"]), "--sentences-per-speaker", str(params["sentences_per_speaker"])]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert str(corpus_folder("synthetic-prosody", cache_dir=corpus_cache_dir, **params)) in out
    assert re.search(r"train +\d+\.\d+ h +24 utterances +3 speakers +6 sentences", out), out
    assert "disk size:" in out and "(cached: reused)" in out


def test_named_configurations_resolve_to_their_parameters(tmp_path):
    # `large` is what the label-efficiency benchmark pretrains on: a config that silently fell back to the defaults
    # (or folders keyed by the config name instead of the parameters) would make it pretrain on the 2-h corpus
    large = corpus_params("synthetic-librispeech", "large")
    assert (large.train_hours, large.train_speakers) == (10.0, 200)
    assert large.eval_hours == corpus_params("synthetic-librispeech").eval_hours  # test set unchanged
    assert corpus_params("synthetic-librispeech", "large", train_hours=12.0).train_hours == 12.0  # kwargs win
    tiny = corpus_folder("synthetic-librispeech", cache_dir=tmp_path, config="tiny")
    assert tiny == corpus_folder("synthetic-librispeech", cache_dir=tmp_path, **TINY_PARAMS["synthetic-librispeech"])
    assert tiny != corpus_folder("synthetic-librispeech", cache_dir=tmp_path, config="large")
    with pytest.raises(ValueError, match="unknown configuration 'huge'.*large"):
        corpus_params("synthetic-librispeech", "huge")


def test_dataset_config_reaches_the_offline_corpus(tmp_path):
    from hf_speech_cl.data import load_speech_dataset

    by_config = load_speech_dataset("synthetic-prosody", config="tiny", split="test", cache_dir=tmp_path)
    by_kwargs = load_speech_dataset(
        "synthetic-prosody", split="test", cache_dir=tmp_path, **TINY_PARAMS["synthetic-prosody"]
    )
    assert by_config["id"] == by_kwargs["id"]
    assert len(list(tmp_path.glob("synthetic-prosody-*"))) == 1  # one build, found twice
