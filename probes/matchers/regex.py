"""`regex` canaries: the answer matches a Python regular expression (re.search).

The pattern is compiled when the golden file is loaded. One that matches the empty string is
refused: an empty answer, or any answer at all, would pass it. Inline flags work as usual:
`(?i)` ignores case, `(?s)` lets `.` cross lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from probes.matchers import Verdict

SCORER = "regex/v1"
SHOWN = 200  # characters of the matched text kept in `detail`


@dataclass(frozen=True, slots=True)
class Regex:
    """Pass when the pattern is found anywhere in the answer."""

    pattern: re.Pattern[str]

    @classmethod
    def of(cls, pattern: str) -> Regex:
        """A matcher; ValueError for a pattern that does not compile or matches ''."""
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad regex {pattern!r}: {exc}") from None
        except (OverflowError, RecursionError) as exc:  # absurd repeat counts, deep nesting
            raise ValueError(f"bad regex {pattern!r}: {type(exc).__name__}") from None
        if compiled.search("") is not None:
            raise ValueError(f"regex {pattern!r} matches the empty answer, so every answer")
        return cls(compiled)

    @property
    def scorer(self) -> str:
        """Scorer name and version."""
        return SCORER

    def complete(self, answer: str) -> bool:
        """Never: a phrase or pattern found in a bare or looping reply is no answer."""
        return False

    def match(self, answer: str) -> Verdict:
        """Judge one answer."""
        found = self.pattern.search(answer)
        detail = {
            "kind": "regex",
            "matched": None if found is None else found.group()[:SHOWN],
            "span": None if found is None else [found.start(), found.end()],
        }
        return Verdict(found is not None, detail)
