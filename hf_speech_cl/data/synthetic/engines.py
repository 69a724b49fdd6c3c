"""The three Debian text-to-speech engines behind the synthetic corpora, with phone timings.

| engine | how it is driven | native rate | phone timings |
|---|---|---|---|
| espeak-ng | `libespeak-ng.so.1` through `ctypes`, in process | 22.05 kHz | phoneme events (`audio_position`, ms) |
| flite | one `flite` process per utterance | 16 kHz | `-psdur` (`phone:end_time` pairs) |
| festival | one `festival --batch` process per batch of utterances | 16 kHz (slt HTS 32 kHz) | `Segment` `end` |

Each engine turns `(text, Prosody)` requests for one `Voice` into `Synthesized` waveforms (float32 at the engine's
native rate) with `(native phone name, end seconds)` segments; `hf_speech_cl.data.synthetic.phones` maps those names
to one inventory. The knobs per utterance (`Prosody`):

- espeak-ng: `espeakRATE` (words per minute, default 175), `espeakPITCH` (0–99, default 50; about 6 units per
  semitone around the default, measured), `espeakRANGE` (0–100, default 50), `espeakWORDGAP` (units of 10 ms)
  — the same parameters as the command line's `-s`, `-p`, `-g` (espeak-ng `src/libespeak-ng/speak_lib.h`).
- flite: `duration_stretch`, `int_f0_target_mean`, `int_f0_target_stddev` (`--setf`; flite `doc/flite.texi`). The
  clustergen voice `rms` ignores the pitch features.
- festival: `Duration_Stretch` and `int_lr_params` (`target_f0_mean`, `target_f0_std`) for the diphone voices
  (festival manual, "Duration" and "Intonation"); the HTS voice honours only the hts_engine speed option `-r`.

A missing engine or voice raises `EngineNotFoundError` (a `RuntimeError`) naming the Debian package to install.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import pickle
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "ENGINES",
    "ENGINE_PACKAGES",
    "FESTIVAL_VOICE_PACKAGES",
    "EngineNotFoundError",
    "Prosody",
    "Synthesized",
    "Voice",
    "check_voice",
    "engine_versions",
    "synthesize",
]

ENGINES = ("espeak-ng", "flite", "festival")
ENGINE_PACKAGES = {"espeak-ng": "espeak-ng", "flite": "flite", "festival": "festival festlex-cmu"}
FESTIVAL_VOICE_PACKAGES = {
    "kal_diphone": "festvox-kallpc16k",
    "ked_diphone": "festvox-kdlpc16k",
    "cmu_us_slt_arctic_hts": "festvox-us-slt-hts",
}
_ESPEAK_LIBRARY = "libespeak-ng.so.1"
_ESPEAK_DEFAULT_WPM = 175  # espeak-ng's default rate (speak_lib.h: espeakRATE_NORMAL)
_ESPEAK_UNITS_PER_SEMITONE = 6.0
_FESTIVAL_DIPHONE_STRETCH = 1.1  # what voice_kal_diphone / voice_ked_diphone set
# festival's default heap (10M cells) costs ~0.5-1 s of page faults at every start; 2M cells synthesize the
# longest fortune sentences in batches of hundreds and start in ~0.1 s.
_FESTIVAL_HEAP_CELLS = 2_000_000


class EngineNotFoundError(RuntimeError):
    """A text-to-speech engine or voice is not installed; the message names the Debian package to install."""


@dataclass(frozen=True)
class Voice:
    """One engine voice.

    Attributes:
        engine: `"espeak-ng"`, `"flite"` or `"festival"`.
        name: the engine's voice name: espeak-ng `language[+variant]` (`"en-us+m3"`), flite `awb|rms|slt|kal16`,
            festival `kal_diphone|ked_diphone|cmu_us_slt_arctic_hts`.
        f0_mean: nominal mean F0 of the voice in Hz (what pitch shifts in semitones are applied to).
        f0_std: nominal F0 standard deviation in Hz (what pitch-range factors are applied to).
        pitch_control: whether the engine honours pitch and pitch-range requests for this voice.
    """

    engine: str
    name: str
    f0_mean: float = 120.0
    f0_std: float = 20.0
    pitch_control: bool = True

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"Voice.engine must be one of {ENGINES}, got {self.engine!r}")

    @property
    def key(self) -> str:
        """`engine/name`, e.g. `"flite/slt"`."""
        return f"{self.engine}/{self.name}"


@dataclass(frozen=True)
class Prosody:
    """Per-utterance engine controls.

    Attributes:
        rate: speaking-rate factor (> 1 faster, 1 the voice's default).
        pitch_semitones: mean-F0 shift from the voice's nominal F0, in semitones (ignored where
            `Voice.pitch_control` is False).
        pitch_range: factor on the F0 excursions (1 the voice's default).
        word_gap: extra pause between words in units of 10 ms (espeak-ng only).
    """

    rate: float = 1.0
    pitch_semitones: float = 0.0
    pitch_range: float = 1.0
    word_gap: int = 0

    def __post_init__(self):
        if not self.rate > 0 or not self.pitch_range >= 0:
            raise ValueError(f"Prosody needs rate > 0 and pitch_range >= 0, got rate={self.rate}, "
                             f"pitch_range={self.pitch_range}")  # fmt: skip


@dataclass
class Synthesized:
    """Engine output for one utterance.

    Attributes:
        waveform: float32 samples in [-1, 1], shape (samples,).
        sampling_rate: the engine's native rate in Hz.
        segments: `(native phone name, end seconds)` in time order, each starting where the previous one ended.
    """

    waveform: np.ndarray
    sampling_rate: int
    segments: list[tuple[str, float]]


def _missing(engine: str) -> EngineNotFoundError:
    return EngineNotFoundError(f"{engine} not found: apt-get install {ENGINE_PACKAGES[engine]}")


@functools.cache
def _festival_voices() -> frozenset[str]:
    out = subprocess.run(
        ["festival", "--heap", str(_FESTIVAL_HEAP_CELLS), "--batch", '(format t "%l\\n" (voice.list))'],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return frozenset(re.findall(r"[\w\-]+", out))


def check_voice(voice: Voice) -> None:
    """Raise `EngineNotFoundError` naming the Debian package if `voice` cannot be synthesized here."""
    if voice.engine == "espeak-ng":
        if shutil.which("espeak-ng") is None and ctypes.util.find_library("espeak-ng") is None:
            raise _missing("espeak-ng")
        _load_espeak()
    elif voice.engine == "flite":
        if shutil.which("flite") is None:
            raise _missing("flite")
    else:
        if shutil.which("festival") is None:
            raise EngineNotFoundError(
                f"festival not found: apt-get install festival festlex-cmu {FESTIVAL_VOICE_PACKAGES.get(voice.name, '')}".strip()
            )
        if voice.name not in _festival_voices():
            package = FESTIVAL_VOICE_PACKAGES.get(voice.name, "festvox-*")
            raise EngineNotFoundError(f"festival voice {voice.name} not found: apt-get install {package}")


def engine_versions() -> dict[str, str]:
    """Version strings of the installed engines (`"missing"` for absent ones), for build records."""
    commands = {
        "espeak-ng": ["espeak-ng", "--version"],
        "flite": ["flite", "--version"],
        "festival": ["festival", "--version"],
    }
    out = {}
    for engine, command in commands.items():
        if shutil.which(command[0]) is None:
            out[engine] = "missing"
            continue
        text = subprocess.run(command, capture_output=True, text=True, timeout=60).stdout
        match = re.search(r"\d+\.\d+(\.\d+)?", text)
        out[engine] = match.group(0) if match else text.strip()[:40]
    return out


# --------------------------------------------------------------------------------------------------- espeak-ng
class _EspeakEvent(ctypes.Structure):
    # espeak_EVENT in speak_lib.h
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS, _INITIALIZE_PHONEME_IPA, _INITIALIZE_DONT_EXIT = 0x0001, 0x0002, 0x8000
_EVENT_LIST_TERMINATED, _EVENT_PHONEME = 0, 7
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7
_CHARS_UTF8 = 1


class _Espeak:
    """libespeak-ng initialised in synchronous mode with IPA phoneme events (once per process: see
    `_espeak_in_child`)."""

    def __init__(self):
        self.lib = _load_espeak()
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        self.sampling_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, options)
        if self.sampling_rate <= 0:
            raise EngineNotFoundError(
                "espeak-ng failed to initialise (espeak-ng-data missing?): apt-get install espeak-ng"
            )
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, str]] = []
        self._callback = _SYNTH_CALLBACK(self._on_audio)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_PHONEME:
                self._events.append((events[i].audio_position, events[i].id.decode("utf-8", errors="ignore")))
            i += 1
        return 0

    def synthesize(self, voice: Voice, text: str, prosody: Prosody) -> Synthesized:
        if self.lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice.name!r} (see `espeak-ng --voices=en`)")
        pitch = 50 + _ESPEAK_UNITS_PER_SEMITONE * prosody.pitch_semitones if voice.pitch_control else 50
        settings = {
            _RATE: int(round(np.clip(_ESPEAK_DEFAULT_WPM * prosody.rate, 80, 450))),
            _PITCH: int(round(np.clip(pitch, 0, 99))),
            _RANGE: int(round(np.clip(50 * prosody.pitch_range, 0, 100))),
            _WORDGAP: int(prosody.word_gap),
        }
        for parameter, value in settings.items():
            self.lib.espeak_SetParameter(parameter, value, 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng failed (status {status}) on {text!r} with voice {voice.name!r}")
        waveform = (np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)).astype(np.float32) / 32768
        duration = len(waveform) / self.sampling_rate
        # phoneme events mark starts (ms); a phone ends where the next starts, the last at the end of the audio
        starts = sorted(self._events, key=lambda e: e[0])
        segments = []
        if starts and starts[0][0] > 0:
            segments.append(("", starts[0][0] / 1000))
        for (start, name), (end, _) in zip(starts, [*starts[1:], (duration * 1000, "")]):
            if end > start:
                segments.append((name, end / 1000))
        return Synthesized(waveform, self.sampling_rate, segments)


def _load_espeak() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(_ESPEAK_LIBRARY)
    except OSError as err:
        raise EngineNotFoundError(
            f"espeak-ng not found ({_ESPEAK_LIBRARY}: {err}): apt-get install espeak-ng"
        ) from err


def _espeak_in_child(voice: Voice, items: Sequence[tuple[str, Prosody]]) -> list[Synthesized]:
    """Synthesize a batch with a fresh libespeak-ng in a forked child process.

    libespeak-ng keeps wave-generator state (the pitch-flutter index, the echo buffer) from one utterance to the
    next and draws from libc `rand()`, so the same request gives different samples depending on what the process
    synthesized before. A fresh library instance per batch, with `srand(0)`, makes a batch's output depend only on
    the batch.
    """
    _load_espeak()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        status = 0
        try:
            os.close(read_end)
            ctypes.CDLL(None).srand(0)
            engine = _Espeak()
            payload = ("ok", [engine.synthesize(voice, text, prosody) for text, prosody in items])
        except BaseException as err:  # noqa: B036 - everything must reach the parent
            payload, status = ("error", err), 1
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pickle.dump(payload, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        try:
            kind, value = pickle.load(pipe)
        except EOFError:
            kind, value = "error", RuntimeError(f"espeak-ng child process died synthesizing with voice {voice.name!r}")
    os.waitpid(pid, 0)
    if kind == "error":
        raise value
    return value


# --------------------------------------------------------------------------------------------------- flite
def _flite(voice: Voice, text: str, prosody: Prosody, workdir: Path) -> Synthesized:
    wav = workdir / "flite.wav"
    command = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / prosody.rate:.4f}"]
    if voice.pitch_control:
        mean = voice.f0_mean * 2 ** (prosody.pitch_semitones / 12)
        command += ["--setf", f"int_f0_target_mean={mean:.2f}", "--setf", f"int_f0_target_stddev={voice.f0_std * prosody.pitch_range:.2f}"]  # fmt: skip
    command += ["-psdur", "-o", str(wav), "-t", text]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as err:
        raise _missing("flite") from err
    if result.returncode != 0 or not wav.is_file():
        raise RuntimeError(f"flite failed on {text!r} with voice {voice.name!r}: {result.stderr.strip()[-500:]}")
    waveform, rate = sf.read(wav, dtype="float32")
    segments = [(name, float(end)) for name, end in re.findall(r"(\S+):([0-9.]+)", result.stdout)]
    return Synthesized(waveform, rate, segments)


# --------------------------------------------------------------------------------------------------- festival
_FESTIVAL_PRELUDE = """
(define (hf_report idx utt wavfile)
  (utt.save.wave utt wavfile 'riff)
  (format t "BEGIN %d\\n" idx)
  (mapcar (lambda (s) (format t "%s %f\\n" (item.name s) (item.feat s "end"))) (utt.relation.items utt 'Segment))
  (format t "END\\n"))
"""


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _festival(voice: Voice, items: Sequence[tuple[str, Prosody]], workdir: Path) -> list[Synthesized]:
    hts = voice.name.endswith("_hts")
    lines = [_FESTIVAL_PRELUDE, f"(voice_{voice.name})"]
    for idx, (text, prosody) in enumerate(items):
        if hts:  # hts_engine's -r: speech speed rate (> 1 faster)
            lines.append(f'(set! hts_engine_params (append {voice.name}::hts_engine_params (list (list "-r" {prosody.rate:.4f}))))')  # fmt: skip
        else:
            lines.append(f"(Parameter.set 'Duration_Stretch {_FESTIVAL_DIPHONE_STRETCH / prosody.rate:.4f})")
            mean = voice.f0_mean * 2 ** (prosody.pitch_semitones / 12) if voice.pitch_control else voice.f0_mean
            std = voice.f0_std * prosody.pitch_range if voice.pitch_control else voice.f0_std
            lines.append(f"(set! int_lr_params '((target_f0_mean {mean:.2f}) (target_f0_std {std:.2f}) (model_f0_mean 170) (model_f0_std 34)))")  # fmt: skip
        wav = workdir / f"festival_{idx}.wav"
        lines.append(
            f"(unwind-protect (let ((utt (Utterance Text {_scheme_string(text)}))) (utt.synth utt) "
            f'(hf_report {idx} utt "{wav}")) (format t "FAIL {idx}\\n"))'
        )
    script = workdir / "batch.scm"
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        result = subprocess.run(
            ["festival", "--heap", str(_FESTIVAL_HEAP_CELLS), "--batch", str(script)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
    except FileNotFoundError as err:
        raise _missing("festival") from err
    segments: dict[int, list[tuple[str, float]]] = {}
    current = None
    for line in result.stdout.splitlines():
        if line.startswith("BEGIN "):
            current = int(line.split()[1])
            segments[current] = []
        elif line.startswith("END"):
            current = None
        elif line.startswith("FAIL "):
            idx = int(line.split()[1])
            raise RuntimeError(
                f"festival failed on {items[idx][0]!r} with voice {voice.name}: {result.stderr.strip()[-500:]}"
            )
        elif current is not None:
            name, end = line.split()
            segments[current].append((name, float(end)))
    out = []
    for idx in range(len(items)):
        wav = workdir / f"festival_{idx}.wav"
        if idx not in segments or not wav.is_file():
            raise RuntimeError(
                f"festival produced no audio for {items[idx][0]!r} with voice {voice.name} "
                f"(exit {result.returncode}): {result.stderr.strip()[-500:]}"
            )
        waveform, rate = sf.read(wav, dtype="float32")
        out.append(Synthesized(waveform, rate, segments[idx]))
    return out


# --------------------------------------------------------------------------------------------------- dispatch
def synthesize(voice: Voice, items: Sequence[tuple[str, Prosody]]) -> list[Synthesized]:
    """Synthesize `items` (`(text, Prosody)` pairs) with one voice.

    Args:
        voice: the voice; festival batches all items into one process.
        items: texts (plain sentences or words; no markup) and their prosody.

    Returns:
        One `Synthesized` per item, in order.

    Raises:
        EngineNotFoundError: the engine is not installed (the message names the Debian package).
        RuntimeError: the engine failed on an item.
    """
    if voice.engine == "espeak-ng":
        return _espeak_in_child(voice, items)
    with tempfile.TemporaryDirectory(prefix="hf_speech_cl_tts_") as tmp:
        workdir = Path(tmp)
        if voice.engine == "flite":
            if shutil.which("flite") is None:
                raise _missing("flite")
            return [_flite(voice, text, prosody, workdir) for text, prosody in items]
        if shutil.which("festival") is None:
            raise _missing("festival")
        return _festival(voice, items, workdir)
