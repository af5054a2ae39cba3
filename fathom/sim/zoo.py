"""The degradation zoo: the ways a faster deployment can get worse, as simulator answers.

A model's `zoo` knob names a member; from `zoo_after_s` seconds after the simulator started
(0: from the start) every answer of that model is degraded the member's way. The words come
from this module's own lists, never from a golden file, so a test that catches a member
proves the probes, not an echo of their references.

Members:
- `abstain`: "I don't know." and its kin; `no` / `yes`: a blanket "No." / "Yes.";
  `refuse`: "I'm sorry, but I can't help with that."; `empty`: nothing at all;
- `loop`: one phrase repeated up to the token limit;
- `terse`: the sound answer cut to its first three words;
- `wrong`: confident, repeatable wrong facts (numbers off by a little, a wrong name) where
  the model knows a fact; answers about nothing in particular stay as they were;
- `drift`: a fresh, different answer on every ask (what re-asking catches);
- `language`: the answer in Spanish; `verbose`: the same content padded to three times its
  length; `prose`: prose where JSON was asked for.
"""

from __future__ import annotations

import random
import re

MEMBERS = (
    "abstain", "no", "yes", "refuse", "empty", "loop", "terse", "wrong", "drift", "language",
    "verbose", "prose",
)  # fmt: skip

ABSTAIN = ("I don't know.", "I'm not sure.", "I have no idea.", "I'm not certain, sorry.")
REFUSE = ("I'm sorry, but I can't help with that.", "I cannot assist with that request.")
LOOP = "and then again"
SPANISH = (
    "Depende de lo que necesites, así que aquí tienes una visión general.",
    "La mayoría de los sistemas guardan un poco de estado cerca de donde se usa.",
    "Lo habitual es empezar con algo sencillo, medir y cambiar una cosa cada vez.",
    "En la práctica hay que elegir entre latencia y rendimiento, y ambos importan.",
    "Conviene revisar la documentación, porque los valores por defecto cambian.",
)
PADDING = ("To put it another way:", "In other words, once more:")
PROSE = (
    "Sure! Here is the information you asked for, written out in plain sentences rather "
    "than in any particular format."
)
_DRIFT_TEMPLATES = (
    "It mostly comes down to the {0}.",
    "Think of a {0} next to a {1}.",
    "Nobody agrees, but the {0} tends to win.",
    "Historically the {0} came first, long before any {1}.",
    "{0}s and {1}s behave alike in this respect.",
    "Start with the {0}; everything else follows.",
)
_DRIFT_WORDS = (
    "river", "copper", "lantern", "orchard", "granite", "violet", "harbour", "falcon",
    "meadow", "cobalt", "ember", "glacier", "saffron", "thicket", "quartz", "tundra",
    "bishop", "cactus", "dynamo", "walrus", "pigment", "comet", "anvil", "lagoon",
)  # fmt: skip
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def degrade(member: str, sound: str, limit: int, rng: random.Random) -> str:
    """The member's answer in place of the `sound` one (`limit`: max_tokens, 0 for none)."""
    if member == "abstain":
        return rng.choice(ABSTAIN)
    if member in ("no", "yes"):
        return member.capitalize() + "."
    if member == "refuse":
        return rng.choice(REFUSE)
    if member == "empty":
        return ""
    if member == "loop":
        return " ".join([LOOP] * max(4, (limit or 64) // 3))
    if member == "terse":
        return " ".join(sound.split()[:3])
    if member == "wrong":
        return _wrong(sound)
    if member == "drift":
        templates = rng.sample(_DRIFT_TEMPLATES, 2)
        return " ".join(t.format(*rng.sample(_DRIFT_WORDS, 2)) for t in templates)
    if member == "language":
        return " ".join(rng.sample(SPANISH, 2))
    if member == "verbose":
        return " ".join([sound, PADDING[0], sound, PADDING[1], sound])
    if member == "prose":
        return PROSE
    raise ValueError(f"unknown zoo member {member!r}; known: {', '.join(MEMBERS)}")


def _wrong(sound: str) -> str:
    """A confident wrong answer: every number a little off, else a firm wrong claim."""
    if _NUMBER.search(sound):
        return _NUMBER.sub(lambda m: _off_by(m.group()), sound)
    return "It is definitely Lisbon, as every reference agrees."


def _off_by(number: str) -> str:
    plain = number.replace(",", "")
    value = float(plain)
    if "." in plain:
        return f"{value + 1.5:g}"
    return str(int(value) + 7)
