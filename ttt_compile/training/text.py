"""The embedded text corpus for the causal LM, a character vocabulary, and batch sampling.

The corpus is SYNTHETIC.  No public-domain prose ships with this machine's packages (checked: the
Python stdlib, site-packages, /usr/share; license texts are not public domain), so the package
embeds text drawn from a seeded probabilistic grammar instead: short stories in English-like
sentences with subject-verb agreement, nested noun phrases, relative and subordinate clauses,
quoted speech, and a cast of characters and places fixed per story and referred to throughout it
(a long-range dependency that a model with memory can use).  `generate(seed)` reproduces the
shipped file `assets/synthetic_stories.txt` byte for byte (Python's `random.Random`, whose
`random()` stream is stable across Python versions).  Every word of the lexicon below was written
for this module; the grammar is not a sample of any existing text.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from importlib import resources

import numpy as np

ASSET = "synthetic_stories.txt"
DEFAULT_SEED = 0
DEFAULT_SIZE = 300_000

# --------------------------------------------------------------------------- lexicon
NAMES = (
    "Ada",
    "Bram",
    "Cleo",
    "Dov",
    "Edda",
    "Finn",
    "Greta",
    "Hugo",
    "Ines",
    "Jory",
    "Kira",
    "Lars",
    "Mira",
    "Nils",
    "Oona",
    "Pim",
    "Rhea",
    "Sven",
    "Tova",
    "Ugo",
    "Vera",
    "Wim",
    "Yara",
    "Zeno",
)
PLACES = (
    "the mill",
    "the harbour",
    "the old bridge",
    "the orchard",
    "the market",
    "the lighthouse",
    "the quarry",
    "the bakery",
    "the school",
    "the station",
    "the forest",
    "the river bank",
)
NOUNS = (
    ("fox", "foxes"),
    ("bird", "birds"),
    ("child", "children"),
    ("farmer", "farmers"),
    ("sailor", "sailors"),
    ("dog", "dogs"),
    ("cat", "cats"),
    ("baker", "bakers"),
    ("horse", "horses"),
    ("teacher", "teachers"),
    ("boat", "boats"),
    ("lamp", "lamps"),
    ("letter", "letters"),
    ("key", "keys"),
    ("apple", "apples"),
    ("stone", "stones"),
    ("song", "songs"),
    ("map", "maps"),
    ("cart", "carts"),
    ("bell", "bells"),
    ("storm", "storms"),
    ("door", "doors"),
    ("loaf", "loaves"),
)
ANIMATE = {"fox", "bird", "child", "farmer", "sailor", "dog", "cat", "baker", "horse", "teacher"}
ADJECTIVES = (
    "old",
    "small",
    "quiet",
    "bright",
    "tired",
    "clever",
    "green",
    "heavy",
    "young",
    "cold",
    "patient",
    "red",
    "distant",
    "careful",
    "hungry",
    "wooden",
    "silver",
    "broken",
    "warm",
)
VERBS_INTRANSITIVE = (
    ("sleeps", "sleep", "slept"),
    ("waits", "wait", "waited"),
    ("sings", "sing", "sang"),
    ("laughs", "laugh", "laughed"),
    ("runs", "run", "ran"),
    ("listens", "listen", "listened"),
    ("returns", "return", "returned"),
    ("hides", "hide", "hid"),
    ("works", "work", "worked"),
)
VERBS_TRANSITIVE = (
    ("sees", "see", "saw"),
    ("finds", "find", "found"),
    ("carries", "carry", "carried"),
    ("follows", "follow", "followed"),
    ("mends", "mend", "mended"),
    ("opens", "open", "opened"),
    ("paints", "paint", "painted"),
    ("counts", "count", "counted"),
    ("keeps", "keep", "kept"),
    ("loses", "lose", "lost"),
    ("remembers", "remember", "remembered"),
)
ADVERBS = (
    "slowly",
    "quickly",
    "again",
    "twice",
    "at dawn",
    "after supper",
    "in the rain",
    "without a word",
    "before noon",
    "all evening",
)
PREPOSITIONS = ("near", "behind", "under", "beside", "across", "beyond", "inside")
SUBORDINATORS = ("because", "while", "when", "although", "until", "after")
SAY = ("said", "whispered", "asked", "called", "answered")


@dataclasses.dataclass
class Story:
    """The fixed cast of one story: who is in it and where it happens."""

    heroes: tuple[str, ...]
    place: str
    thing: tuple[str, str]


class Grammar:
    """A probabilistic grammar over the lexicon; every choice is drawn from one `random.Random`."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def pick(self, seq):
        return seq[int(self.r.random() * len(seq))]

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    # ----- phrases: each returns (text, plural)
    def noun_phrase(self, story: Story, depth: int = 0, animate: bool = False) -> tuple[str, bool]:
        u = self.r.random()
        if u < 0.35:
            return self.pick(story.heroes), False
        if u < 0.45 and not animate:
            return f"the {story.thing[0]}", False
        pool = [n for n in NOUNS if n[0] in ANIMATE] if animate else NOUNS
        singular, plural_form = self.pick(pool)
        plural = self.chance(0.3)
        det = self.pick(("the", "some", "two", "many")) if plural else self.pick(("the", "a", "every", "that"))
        adjs = " ".join(self.pick(ADJECTIVES) for _ in range(int(self.chance(0.5)) + int(self.chance(0.15))))
        text = f"{det} {adjs + ' ' if adjs else ''}{plural_form if plural else singular}"
        if depth < 1 and self.chance(0.2):
            obj, _ = self.noun_phrase(story, depth + 1)
            text += f" {self.pick(PREPOSITIONS)} {obj}"
        if depth < 1 and self.chance(0.15):
            vp = self.verb_phrase(story, plural, tense=0, depth=depth + 1)
            text += f" that {vp}"
        return text, plural

    def verb_phrase(self, story: Story, plural: bool, tense: int, depth: int = 0) -> str:
        """tense 0: present (agreeing with `plural`), 2: past."""
        form = 2 if tense == 2 else (1 if plural else 0)
        if self.chance(0.45):
            text = self.pick(VERBS_INTRANSITIVE)[form]
        else:
            obj, _ = self.noun_phrase(story, depth + 1)
            text = f"{self.pick(VERBS_TRANSITIVE)[form]} {obj}"
        if self.chance(0.35):
            text += f" {self.pick(ADVERBS)}"
        if self.chance(0.2):
            text += f" {self.pick(PREPOSITIONS)} {story.place}"
        return text

    def clause(self, story: Story, tense: int, depth: int = 0) -> str:
        subject, plural = self.noun_phrase(story, depth, animate=self.chance(0.7))
        text = f"{subject} {self.verb_phrase(story, plural, tense, depth)}"
        if depth < 1 and self.chance(0.25):
            text += f" {self.pick(SUBORDINATORS)} {self.clause(story, tense, depth + 1)}"
        return text

    def sentence(self, story: Story) -> str:
        if self.chance(0.2):
            speaker = self.pick(story.heroes)
            words = self.clause(story, tense=0)
            mark = "?" if self.chance(0.3) else "."
            return f'"{_capital(words)}{mark}" {self.pick(SAY)} {speaker}.'
        text = self.clause(story, tense=2)
        if self.chance(0.2):
            text += f", and {self.clause(story, tense=2)}"
        return _capital(text) + "."

    def story(self, number: int) -> str:
        cast = tuple(self.r.sample(NAMES, 2 + int(self.chance(0.5))))
        story = Story(cast, self.pick(PLACES), self.pick(NOUNS))
        opening = (
            f"{number}. {' and '.join(cast)} lived near {story.place}, where they kept "
            f"a {self.pick(ADJECTIVES)} {story.thing[0]}."
        )
        body = [self.sentence(story) for _ in range(4 + int(self.r.random() * 6))]
        ending = f"In the end {self.pick(cast)} took the {story.thing[0]} back to {story.place}."
        return " ".join([opening, *body, ending])


def _capital(s: str) -> str:
    return s[:1].upper() + s[1:]


def generate(seed: int = DEFAULT_SEED, size: int = DEFAULT_SIZE) -> str:
    """Stories from the grammar, one paragraph each, until at least `size` characters (deterministic)."""
    g, parts, total, n = Grammar(seed), [], 0, 1
    while total < size:
        s = g.story(n) + "\n\n"
        parts.append(s)
        total += len(s)
        n += 1
    return "".join(parts)


def load() -> str:
    """The shipped corpus (generate() with the default seed and size)."""
    return resources.files("ttt_compile").joinpath("assets", ASSET).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- tokens
@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Characters <-> ids (sorted characters of a text)."""

    chars: str

    @classmethod
    def of(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.chars)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise ValueError(f"CharVocab.encode: characters {unknown!r} are not in the vocabulary")
        return np.fromiter((index[c] for c in text), dtype=np.int32, count=len(text))

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids).reshape(-1))


def split(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the last `val_fraction` of the stream is held out (contiguous)."""
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def windows(ids: np.ndarray, seq_len: int, batch: int, seed: int) -> Iterator[np.ndarray]:
    """Endless batches (batch, seq_len + 1) of random windows: inputs [:, :-1], targets [:, 1:]."""
    if len(ids) <= seq_len + 1:
        raise ValueError(f"windows: a stream of {len(ids)} tokens is too short for seq_len={seq_len}")
    rng = np.random.default_rng(seed)
    offsets = np.arange(seq_len + 1)
    while True:
        starts = rng.integers(0, len(ids) - seq_len - 1, size=batch)
        yield ids[starts[:, None] + offsets[None, :]]


def eval_windows(ids: np.ndarray, seq_len: int, limit: int | None = None) -> np.ndarray:
    """Non-overlapping windows (m, seq_len + 1) covering the stream (the last partial one dropped)."""
    m = (len(ids) - 1) // seq_len
    m = m if limit is None else min(m, limit)
    return np.stack([ids[i * seq_len : i * seq_len + seq_len + 1] for i in range(m)])


__all__ = ["generate", "load", "CharVocab", "split", "windows", "eval_windows", "Grammar"]
