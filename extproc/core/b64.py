"""Base64 as the formats here use it (RFC 4648 section 4), decoded strictly.

`base64.b64decode(validate=True)` still accepts a text whose last character
carries bits past the data (`...AQ=` and `...AS=` decode to the same bytes),
so one signature, hash or key has several texts, and a flipped bit in a
signed note could leave it verifying. Every base64 field this project parses
goes through `decode`, which takes the one canonical text only. Writers
(ours, and Go's encoding/base64) only ever produce that one.
"""

from __future__ import annotations

import base64
import binascii


def decode(text: str) -> bytes:
    """The bytes of canonical standard base64 `text`; ValueError otherwise
    (a binascii.Error for a character outside the alphabet or bad padding)."""
    data = base64.b64decode(text, validate=True)
    if base64.b64encode(data).decode("ascii") != text:
        raise binascii.Error("not canonical base64 (bits set past the data)")
    return data
