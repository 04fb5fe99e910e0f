"""Text rules every service applies the same way.

* :func:`username_key`: the one normalisation of usernames (NFKC, then casefold, then NFKC again, i.e.
  Unicode's NFKC_Casefold closure). Computed once, in Python, stored beside the username, and compared by
  plain equality in SQL, so the lockout counter, the rate limit and the user lookup can never disagree on
  which account a typed name means (PostgreSQL's ``lower()`` and Python's ``casefold()`` do disagree, e.g. on
  ``İ``).
* :func:`fold_accents`: for comparisons that must not be defeated by one accent (common passwords).
* :data:`Text` / :data:`MultilineText`: string types that refuse control characters (NUL included, which
  PostgreSQL cannot store) and lone surrogates at the edge, with a 422 naming the field.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

#: What no field accepts: Unicode's control characters (category Cc: C0, DEL, C1) and surrogates (Cs, not
#: encodable). A regex, not a per-character category lookup: bulk uploads check a name on every row.
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_REFUSED_IN_LINES = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")  # \t \n \r allowed


def username_key(username: str) -> str:
    """The form in which usernames are stored for comparison, counted for lockout and rate limits."""
    # Stripped last: NFKC can itself produce edge spaces (``¨`` is a space and a combining diaeresis).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold()).strip()


def fold_accents(text: str) -> str:
    """Drop combining marks after compatibility decomposition (``Pàssword`` → ``Password``)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFKC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))


def has_control_character(text: str, *, multiline: bool = False) -> bool:
    return (_REFUSED_IN_LINES if multiline else _REFUSED).search(text) is not None


def _refuse_controls(multiline: bool) -> Callable[[str], str]:
    def check(value: str) -> str:
        if has_control_character(value, multiline=multiline):
            raise PydanticCustomError("control_character", "must not contain control characters")
        return value

    return check


#: A single-line string field: names, identifiers, filters.
Text = Annotated[str, AfterValidator(_refuse_controls(multiline=False))]
#: Free text that may span lines (an address, the wording of a consent): tabs and line breaks allowed.
MultilineText = Annotated[str, AfterValidator(_refuse_controls(multiline=True))]
