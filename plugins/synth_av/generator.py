"""``synth_av``: a procedurally generated audio-visual emotion corpus.

Why it exists: LiSER must run end to end on a fresh offline machine, and its tests need data
with the structure that makes cross-modal distillation work. Everything here is generated from a
seed in seconds; the same seed gives the same bytes.

Generative model
================

Speakers. Each speaker has a sex (alternating), a base pitch (log-normal around 115 Hz for male,
205 Hz for female voices), a speaking rate (4.5 syllables/s x U(0.85, 1.15)), a vocal-tract
length factor that scales formants, a spectral-tilt offset, a recording gain (+-3 dB), and an
*expressiveness* in U(0.45, 1.35) that scales how strongly emotion shows in the voice. A face:
head size and position, skin and background brightness, resting mouth curvature and brow height.

Audio (``sample_rate``, ``seconds``). A clip is a run of voiced syllables separated by short
pauses. Per emotion (:data:`AUDIO_CUES`), relative to the speaker's neutral voice: pitch shift
and excursion (semitones), pitch slope over the utterance, energy, syllable rate, jitter (cycle
to cycle F0 perturbation), spectral tilt (dB/octave; low = bright, tense voice) and breathiness.
Every cue is scaled by the speaker's expressiveness and perturbed per clip. The signal is an
additive harmonic source (harmonics up to 4 kHz with the tilt and two vowel formants per
syllable) plus breath noise, under a syllable envelope, plus background noise at 20-35 dB SNR.

Video (``frames`` x 48 x 48 grey, over the clip's duration). A drawn face: an elliptic head,
two eyes whose opening, two brows whose height and inner-end tilt, and a mouth whose curvature,
opening and width follow the emotion (:data:`FACE_CUES`); the expression rises over the first
frames; per-frame head translation, scale and rotation jitter, a lighting gradient and flicker,
sensor noise, and random blinks.

Where distillation has something to teach. For some pairs the audio cues are nearly equal and
smaller than the spread between speakers — neutral/calm, neutral/disgust, happy/surprised and
calm/sad differ by a fraction of a semitone, a few percent of rate and a dB or two — so a
student that hears a handful of labeled speakers cannot separate them, while the face separates
every class clearly. A face teacher fitted on the ``teacher`` split labels the large
``unlabeled`` pool almost perfectly, and an audio student distilled from those labels sees many
more speakers per class than the small ``labeled`` split offers (cross-modal distillation,
Albanie et al. 2018).

Splits have disjoint speakers: ``teacher`` (stands for the large external data real teachers are
trained on), ``labeled`` (small), ``unlabeled`` (large, labels hidden from the student), ``test``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from liser_core.data import Clip
from liser_core.labels import CREMAD6, RAVDESS8, LabelSpace

# emotion: (pitch st, excursion st, slope st/s, energy dB, rate x, jitter, tilt dB/oct, breath)
AUDIO_CUES: dict[str, tuple[float, ...]] = {
    "neutral": (0.0, 1.5, -1.0, 0.0, 1.00, 0.004, 9.0, 0.05),
    "calm": (-0.5, 1.1, -1.3, -1.5, 0.94, 0.004, 9.6, 0.07),
    "happy": (3.0, 3.8, 0.8, 3.0, 1.10, 0.006, 7.5, 0.05),
    "sad": (-1.6, 0.8, -1.8, -4.0, 0.82, 0.008, 10.8, 0.11),
    "angry": (2.4, 3.2, -2.2, 6.0, 1.16, 0.014, 5.0, 0.05),
    "fearful": (4.2, 2.4, 0.6, 1.0, 1.28, 0.022, 8.0, 0.14),
    "disgust": (-0.6, 1.7, -1.6, 0.5, 0.93, 0.007, 8.9, 0.06),
    "surprised": (3.4, 4.3, 1.6, 3.2, 1.06, 0.007, 7.3, 0.06),
}

# emotion: (mouth curvature, mouth opening, mouth width, brow raise, brow inner tilt, eye opening)
FACE_CUES: dict[str, tuple[float, ...]] = {
    "neutral": (0.0, 0.05, 1.00, 0.0, 0.0, 0.60),
    "calm": (0.35, 0.00, 0.95, -0.15, 0.0, 0.25),
    "happy": (1.00, 0.35, 1.20, 0.10, 0.0, 0.45),
    "sad": (-0.80, 0.05, 0.90, 0.10, 0.9, 0.35),
    "angry": (-0.30, 0.25, 1.00, -0.50, -1.0, 0.55),
    "fearful": (-0.25, 0.65, 1.10, 0.70, 0.6, 1.00),
    "disgust": (-0.60, 0.15, 0.85, -0.30, -0.5, 0.30),
    "surprised": (0.00, 1.00, 0.70, 1.00, 0.0, 1.00),
}

# vowel formants (F1, F2) in Hz for an average voice
VOWELS = np.array([[730, 1090], [530, 1840], [270, 2290], [570, 840], [300, 870], [660, 1720]])

SPEAKER_PREFIX = {"teacher": "tch", "labeled": "lab", "unlabeled": "unl", "test": "tst"}
SPLIT_SPEAKERS = {"teacher": 12, "labeled": 4, "unlabeled": 24, "test": 8}
SPLIT_CLIPS = {"teacher": 6, "labeled": 2, "unlabeled": 4, "test": 4}
LABEL_SETS = {"ravdess8": RAVDESS8, "cremad6": CREMAD6}
FACE_SIZE = 48


@dataclass(frozen=True)
class Speaker:
    id: str
    female: bool
    f0: float
    rate: float
    tract: float
    tilt: float
    gain_db: float
    expressive: float
    head: tuple[float, float, float, float]  # cx, cy, half width, half height (pixels)
    skin: float
    background: float
    rest_curve: float
    rest_brow: float


def _rng(*key) -> np.random.Generator:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def make_speaker(seed: int, split: str, i: int) -> Speaker:
    r = _rng(seed, "speaker", split, i)
    female = i % 2 == 1
    return Speaker(
        id=f"{SPEAKER_PREFIX[split]}{i:02d}",
        female=female,
        f0=(205.0 if female else 115.0) * float(np.exp(r.normal(0, 0.12))),
        rate=4.5 * r.uniform(0.85, 1.15),
        tract=r.uniform(0.9, 1.12) * (1.12 if female else 1.0),
        tilt=r.normal(0, 1.2),
        gain_db=r.uniform(-3, 3),
        expressive=r.uniform(0.45, 1.35),
        head=(
            FACE_SIZE / 2 + r.uniform(-2, 2),
            FACE_SIZE / 2 + r.uniform(-1, 2),
            r.uniform(14, 18),
            r.uniform(18, 21),
        ),
        skin=r.uniform(0.55, 0.85),
        background=r.uniform(0.05, 0.35),
        rest_curve=r.normal(0, 0.12),
        rest_brow=r.normal(0, 0.1),
    )


# ---------------------------------------------------------------------------------------------
# audio
# ---------------------------------------------------------------------------------------------


def _smooth_noise(r: np.random.Generator, n: int, width: int) -> np.ndarray:
    x = r.standard_normal(n + width)
    k = np.hanning(width)
    k /= np.sqrt((k**2).sum())
    return np.convolve(x, k, mode="valid")[:n]


def _moving_average(x: np.ndarray, width: int) -> np.ndarray:
    c = np.cumsum(np.concatenate([np.zeros(width), x, np.zeros(width)]))
    return ((c[width:] - c[:-width]) / width)[width // 2 : width // 2 + len(x)]


def synth_audio(sp: Speaker, emotion: str, r: np.random.Generator, sr: int, seconds: float) -> np.ndarray:
    pitch, excursion, slope, energy, rate, jitter, tilt, breath = AUDIO_CUES[emotion]
    n0 = AUDIO_CUES["neutral"]
    e = sp.expressive
    # cue = speaker's neutral + expressiveness x emotion delta + per-clip perturbation
    pitch = e * (pitch - n0[0]) + r.normal(0, 0.6)
    excursion = (n0[1] + e * (excursion - n0[1])) * r.uniform(0.8, 1.2)
    slope = (n0[2] + e * (slope - n0[2])) + r.normal(0, 0.5)
    energy = e * (energy - n0[3]) + sp.gain_db + r.normal(0, 1.0)
    rate = sp.rate * (1 + e * (rate - 1)) * r.uniform(0.93, 1.07)
    jitter = jitter * (0.5 + 0.5 * e) * r.uniform(0.7, 1.3)
    tilt = n0[6] + e * (tilt - n0[6]) + sp.tilt + r.normal(0, 0.6)
    breath = breath * r.uniform(0.7, 1.3)

    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    # syllables: onsets from the rate, each voiced for 55-80 % of its slot
    n_syl = max(2, int(round(rate * seconds)))
    slots = r.dirichlet(np.full(n_syl, 6.0)) * seconds * r.uniform(0.85, 0.95)
    onsets = np.concatenate([[r.uniform(0.0, 0.04)], np.cumsum(slots)[:-1]])
    env = np.zeros(n)
    accent = np.zeros(n)
    f1 = np.full(n, VOWELS[0, 0], dtype=float)
    f2 = np.full(n, VOWELS[0, 1], dtype=float)
    for k in range(n_syl):
        a = int(onsets[k] * sr)
        b = min(n, a + int(slots[k] * r.uniform(0.55, 0.8) * sr))
        if b - a < 8:
            continue
        env[a:b] = np.sin(np.linspace(0, np.pi, b - a)) ** 0.7 * r.uniform(0.7, 1.0)
        accent[a:b] = r.uniform(-1, 1)
        v = VOWELS[r.integers(len(VOWELS))] * sp.tract
        f1[a:b], f2[a:b] = v
    accent = _moving_average(_moving_average(accent, int(0.025 * sr)), int(0.025 * sr))
    semis = pitch + slope * (t - seconds / 2) + excursion * accent
    f0 = sp.f0 * 2 ** (semis / 12) * (1 + jitter * _smooth_noise(r, n, 48))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    n_harm = int(min(24, 4000 // f0.max()))
    k = np.arange(1, n_harm + 1, dtype=np.float32)[:, None]
    # harmonic amplitudes (tilt x formants) at a 2.5 ms control rate, held between updates
    hop = max(1, sr // 400)
    fc = (k * f0[None, ::hop]).astype(np.float32)
    formant = 1 + 5 * np.exp(-(((fc - f1[::hop]) / 140) ** 2)) + 3 * np.exp(-(((fc - f2[::hop]) / 220) ** 2))
    amp = 10 ** (-tilt * np.log2(k) / 20) * formant * (fc < sr / 2 - 200)
    amp = np.repeat(amp, hop, axis=1)[:, :n]
    start = r.uniform(0, 2 * np.pi, (n_harm, 1)).astype(np.float32)
    phase = np.mod(phase, 2 * np.pi).astype(np.float32)  # exact: k is an integer
    voiced = (amp * np.sin(k * phase[None, :] + start)).sum(0)
    voiced /= np.abs(voiced).max() + 1e-9
    noise = np.convolve(r.standard_normal(n), [0.5, 0.5], mode="same")
    y = env * (voiced + breath * 4 * noise)
    y *= 0.1 * 10 ** (energy / 20) / (np.sqrt(np.mean(y**2)) + 1e-9)
    snr_db = r.uniform(20, 35)
    floor = np.sqrt(np.mean(y**2)) / 10 ** (snr_db / 20)
    y = y + floor * r.standard_normal(n)
    return np.clip(y, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# video
# ---------------------------------------------------------------------------------------------


def _soft(d: np.ndarray, width: float = 0.7) -> np.ndarray:
    """1 inside (d < 0), 0 outside, anti-aliased over ``width`` pixels."""
    return 1 / (1 + np.exp(np.clip(d / width, -30, 30)))


def _segment_dist(px, py, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy + 1e-9), 0, 1)
    return np.hypot(px - (x0 + t * dx), py - (y0 + t * dy))


def synth_frames(sp: Speaker, emotion: str, r: np.random.Generator, n_frames: int) -> np.ndarray:
    curve, opening, width, brow, tilt, eye = FACE_CUES[emotion]
    intensity = r.uniform(0.75, 1.1)
    yy, xx = np.mgrid[0:FACE_SIZE, 0:FACE_SIZE].astype(float)
    out = np.empty((n_frames, FACE_SIZE, FACE_SIZE), dtype=np.uint8)
    cx0, cy0, hw, hh = sp.head
    blink = r.integers(n_frames) if r.random() < 0.3 else -1
    for f in range(n_frames):
        ramp = min(1.0, 0.45 + 0.55 * f / max(1, n_frames // 3)) * intensity
        cx = cx0 + r.normal(0, 0.8)
        cy = cy0 + r.normal(0, 0.8)
        s = 1 + r.normal(0, 0.03)
        ang = r.normal(0, 0.05)
        # head-centred, rotated, scaled coordinates
        u = ((xx - cx) * np.cos(ang) + (yy - cy) * np.sin(ang)) / s
        v = (-(xx - cx) * np.sin(ang) + (yy - cy) * np.cos(ang)) / s
        img = sp.background + 0.15 * (xx / FACE_SIZE) * r.uniform(-1, 1)
        head = _soft((np.sqrt((u / hw) ** 2 + (v / hh) ** 2) - 1) * hw)
        img = img * (1 - head) + sp.skin * head
        dark = 0.1
        # eyes
        eo = (0.6 + ramp * (eye - 0.6)) if f != blink else 0.05
        for side in (-1, 1):
            ex, ey = side * 0.42 * hw, -0.22 * hh
            ew, eh = 0.2 * hw, max(0.3, 0.16 * hh * eo)
            m = _soft((np.sqrt(((u - ex) / ew) ** 2 + ((v - ey) / eh) ** 2) - 1) * eh)
            img = img * (1 - m) + dark * m
            # brows: inner end raised by tilt > 0, lowered by tilt < 0
            by = ey - 0.2 * hh - ramp * brow * 0.12 * hh - sp.rest_brow * 0.1 * hh
            inner = -ramp * tilt * 0.09 * hh
            x_in, x_out = side * 0.12 * hw, side * 0.7 * hw
            d = _segment_dist(u, v, x_in, by + inner, x_out, by)
            m = _soft(d - 1.1)
            img = img * (1 - m) + 0.15 * m
        # mouth: lip line y = my - c * ((x - 0) / mw)^2 (image y points down), opening below it
        my, mw = 0.5 * hh, 0.34 * hw * (1 + ramp * (width - 1))
        c = (sp.rest_curve + ramp * curve) * 0.13 * hh
        xs = np.clip(u / mw, -1, 1)
        lip = my - c * (xs**2 - 0.5)
        inside = np.abs(u) < mw
        op = ramp * opening * 0.22 * hh
        m = _soft(np.abs(v - lip) - 0.9) * inside
        if op > 0.4:
            lower = lip + op * np.sqrt(np.clip(1 - xs**2, 0, 1))
            m = np.maximum(m, _soft(np.maximum(lip - v, v - lower)) * inside)
        img = img * (1 - m) + 0.05 * m
        img = img * r.uniform(0.85, 1.15) + r.normal(0, 0.03, img.shape)
        out[f] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------------


def generate(
    seed: int = 0,
    classes: str = "ravdess8",
    sample_rate: int = 16000,
    seconds: float = 1.0,
    frames: int = 8,
    speakers: dict[str, int] | None = None,
    clips_per_emotion: dict[str, int] | None = None,
) -> tuple[LabelSpace, dict[str, list[Clip]]]:
    """Generate every split. Deterministic: each clip's randomness derives from its own key."""
    space = LABEL_SETS[classes]
    speakers = {**SPLIT_SPEAKERS, **(speakers or {})}
    per = {**SPLIT_CLIPS, **(clips_per_emotion or {})}
    splits: dict[str, list[Clip]] = {}
    for split in SPLIT_SPEAKERS:
        clips = []
        for i in range(speakers[split]):
            sp = make_speaker(seed, split, i)
            for emotion in space.classes:
                for rep in range(per[split]):
                    r = _rng(seed, "clip", split, i, emotion, rep)
                    audio = synth_audio(sp, emotion, r, sample_rate, seconds)
                    video = synth_frames(sp, emotion, r, frames)
                    clips.append(
                        Clip(
                            clip_id=f"{sp.id}_{emotion}_{rep}",
                            audio=audio,
                            sample_rate=sample_rate,
                            speaker=sp.id,
                            label=emotion,
                            frames=video,
                            fps=frames / seconds,
                        )
                    )
        splits[split] = clips
    return space, splits
