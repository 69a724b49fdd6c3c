"""One phone inventory for every engine: ARPAbet without stress, lower case, plus `sil`.

The three engines name their phones differently:

- flite (`cmu_us_*` voices) and festival (`radio` phone set, used by kal/ked diphone and the slt HTS voice) print
  lower-case ARPAbet with a few TIMIT-style extras (`ax`, `axr`, `dx`, `el`, `em`, `en`, `hv`, `nx`, `pau`, `h#`,
  `brth`). These fold onto the 39 CMUdict phones the way the usual TIMIT 61 → 39 folding does (Lee & Hon 1989,
  "Speaker-independent phone recognition using hidden Markov models", IEEE TASSP 37(11), table I): `ax → ah`,
  `axr → er`, `el → l`, `em → m`, `en → n`, `nx → n`, `hv → hh`, pauses and breaths `→ sil`. The flap `dx` is
  voiced, so it folds to `d`.
- espeak-ng reports IPA phoneme names (`espeakINITIALIZE_PHONEME_IPA`), which differ between its eight English
  accents (`ɒ` in British, `ɚ` in American, `ʉː` in Scottish, ...). `ESPEAK_IPA_TO_ARPABET` maps every name these
  accents produce (measured on the Harvard sentences) to the nearest American ARPAbet phone; a name that holds a
  vowel plus a rhotic or a schwa (`ɑːɹ`, `aɪə`) maps to two phones that share the event's time span equally. Pauses
  (empty names) are `sil`. Unlisted names (a future espeak-ng) are matched by their longest known prefix after
  dropping length marks and diacritics, and fall back to `sil` only if nothing matches.

`normalize_alignment` turns an engine's `(phone, end_time)` list into non-overlapping, sorted, gap-free segments that
lie inside the audio, merging consecutive `sil`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

__all__ = [
    "ARPABET",
    "ESPEAK_IPA_TO_ARPABET",
    "PHONE_INVENTORY",
    "RADIO_TO_ARPABET",
    "SILENCE",
    "map_phone",
    "normalize_alignment",
]

SILENCE = "sil"

# The 39 CMUdict phones (http://www.speech.cs.cmu.edu/cgi-bin/cmudict), stress removed, lower case.
ARPABET: tuple[str, ...] = (
    "aa", "ae", "ah", "ao", "aw", "ay", "b", "ch", "d", "dh", "eh", "er", "ey", "f", "g", "hh", "ih", "iy", "jh",
    "k", "l", "m", "n", "ng", "ow", "oy", "p", "r", "s", "sh", "t", "th", "uh", "uw", "v", "w", "y", "z", "zh",
)  # fmt: skip
PHONE_INVENTORY: tuple[str, ...] = (*ARPABET, SILENCE)

# festival `radio` phone set and flite's `cmu_us` phone set (a subset of it).
RADIO_TO_ARPABET: dict[str, tuple[str, ...]] = {p: (p,) for p in ARPABET}
RADIO_TO_ARPABET.update(
    {
        "ax": ("ah",),
        "axr": ("er",),
        "dx": ("d",),
        "el": ("l",),
        "em": ("m",),
        "en": ("n",),
        "nx": ("n",),
        "hv": ("hh",),
        "pau": (SILENCE,),
        "h#": (SILENCE,),
        "brth": (SILENCE,),
        "sil": (SILENCE,),
    }
)

# espeak-ng 1.51 IPA phoneme names of the accents en, en-us, en-gb-scotland, en-gb-x-gbclan, en-gb-x-rp,
# en-gb-x-gbcwmd, en-029 and en-us-nyc, mapped to the nearest General American ARPAbet phone(s).
ESPEAK_IPA_TO_ARPABET: dict[str, tuple[str, ...]] = {
    "": (SILENCE,),
    # consonants
    "p": ("p",), "b": ("b",), "t": ("t",), "t̪": ("t",), "d": ("d",), "k": ("k",), "ɡ": ("g",), "g": ("g",),
    "ʔ": ("t",), "ɾ": ("d",), "tʃ": ("ch",), "dʒ": ("jh",), "f": ("f",), "v": ("v",), "θ": ("th",), "ð": ("dh",),
    "s": ("s",), "z": ("z",), "ʃ": ("sh",), "ʒ": ("zh",), "h": ("hh",), "x": ("hh",), "m": ("m",), "n": ("n",),
    "n̩": ("n",), "ŋ": ("ng",), "l": ("l",), "əl": ("l",), "ɬ": ("l",), "ɹ": ("r",), "r": ("r",), "w": ("w",),
    "ʍ": ("w",), "j": ("y",), "ʲ": ("y",),
    # monophthongs
    "i": ("iy",), "iː": ("iy",), "ɪ": ("ih",), "ᵻ": ("ih",), "e": ("ey",), "eː": ("ey",), "ɛ": ("eh",),
    "æ": ("ae",), "a": ("ae",), "aː": ("aa",), "a:": ("aa",), "aa": ("aa",), "ɑː": ("aa",), "ɑ": ("aa",),
    "ɒ": ("aa",), "ɔ": ("ao",), "ɔː": ("ao",), "o": ("ow",), "oː": ("ow",), "ʊ": ("uh",), "u": ("uw",),
    "uː": ("uw",), "ʉ": ("uw",), "ʉː": ("uw",), "ʌ": ("ah",), "ə": ("ah",), "ɐ": ("ah",), "ɜ": ("er",),
    "ɜː": ("er",), "ɚ": ("er",), "əɹ": ("er",),
    # diphthongs
    "eɪ": ("ey",), "ei": ("ey",), "aɪ": ("ay",), "əɪ": ("ay",), "ɔɪ": ("oy",), "oɪ": ("oy",), "aʊ": ("aw",),
    "æʊ": ("aw",), "ʌʉ": ("aw",), "oʊ": ("ow",), "əʊ": ("ow",), "ʌʊ": ("ow",), "əu": ("ow",), "ɛə": ("ae",),
    "eə": ("eh",), "iə": ("iy", "ah"), "ʊə": ("uh", "ah"), "ɔə": ("ao",), "oə": ("ao",), "ɑə": ("aa",),
    "aɪə": ("ay", "ah"),
    # vowel + r
    "ɑːɹ": ("aa", "r"), "ɔːɹ": ("ao", "r"), "oːɹ": ("ao", "r"), "ɛɹ": ("eh", "r"), "ɪɹ": ("ih", "r"),
    "ʊɹ": ("uh", "r"), "ʌɹ": ("ah", "r"), "ʉɹ": ("uw", "r"), "aɪɚ": ("ay", "er"), "aɪɹ": ("ay", "r"),
}  # fmt: skip


def _strip_marks(name: str) -> str:
    """Drop length marks, stress marks and combining diacritics from an IPA name."""
    decomposed = unicodedata.normalize("NFD", name)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch) and ch not in "ːˑˈˌ:'\",%")


def map_phone(engine: str, name: str) -> tuple[str, ...]:
    """Map one phone name of `engine` to one or more phones of `PHONE_INVENTORY`.

    Args:
        engine: `"espeak-ng"`, `"flite"` or `"festival"`.
        name: the engine's phone name (IPA for espeak-ng, radio/cmu ARPAbet for flite and festival).

    Returns:
        One phone, or two for an espeak-ng name that spans two ARPAbet phones (they share the time span).

    Raises:
        ValueError: for an unknown engine.
    """
    if engine == "espeak-ng":
        table = ESPEAK_IPA_TO_ARPABET
        if name in table:
            return table[name]
        stripped = _strip_marks(name)
        for end in range(len(stripped), 0, -1):  # longest known prefix
            if stripped[:end] in table:
                return table[stripped[:end]]
        return (SILENCE,)
    if engine in ("flite", "festival"):
        key = name.lower().rstrip("012")
        return RADIO_TO_ARPABET.get(key, (SILENCE,))
    raise ValueError(f"map_phone: unknown engine {engine!r}; expected 'espeak-ng', 'flite' or 'festival'")


def normalize_alignment(
    engine: str, segments: Iterable[tuple[str, float]], duration: float, *, time_scale: float = 1.0
) -> list[dict[str, float | str]]:
    """Turn an engine's `(phone, end_time)` pairs into clean segments in `PHONE_INVENTORY`.

    Args:
        engine: the engine that named the phones (see `map_phone`).
        segments: `(native_phone_name, end_seconds)` in time order; a segment starts where the previous one ended
            (the first at 0), which is how flite `-psdur`, festival's `Segment` relation and espeak-ng's phoneme
            events (start times, converted by the caller) describe them.
        duration: length of the final audio in seconds; segments are clipped to it and a trailing `sil` fills any
            rest, so the alignment covers exactly `[0, duration]`.
        time_scale: factor applied to every time before clipping (resampling, speed warping: output seconds per
            engine second).

    Returns:
        `[{"phone": str, "start": float, "end": float}, ...]` sorted, non-overlapping and gap-free, with
        `0 <= start < end <= duration`, consecutive `sil` merged.

    Raises:
        ValueError: if `duration` is not positive.
    """
    if not duration > 0:
        raise ValueError(f"normalize_alignment: duration must be > 0 seconds, got {duration}")
    spans: list[tuple[str, float, float]] = []
    start = 0.0
    for name, end in segments:
        end = float(end) * time_scale
        if end <= start:
            continue
        phones = map_phone(engine, name)
        step = (end - start) / len(phones)
        for k, phone in enumerate(phones):
            spans.append((phone, start + k * step, start + (k + 1) * step))
        start = end
    out: list[dict[str, float | str]] = []
    for phone, s, e in spans:
        s, e = max(0.0, s), min(duration, e)
        if e - s <= 0:
            continue
        if out and out[-1]["phone"] == phone == SILENCE:
            out[-1]["end"] = e
        else:
            out.append({"phone": phone, "start": s, "end": e})
    if not out or out[-1]["end"] < duration:
        last_end = out[-1]["end"] if out else 0.0
        if out and out[-1]["phone"] == SILENCE:
            out[-1]["end"] = duration
        else:
            out.append({"phone": SILENCE, "start": last_end, "end": duration})
    return out
