"""Tokens as text a person can read: what the tokenizer decodes, with the invisible made visible.

Each token is decoded on its own (so a leading space stays a space), then:
- newline -> "↵", tab -> "⇥", carriage return -> "␍", other control characters -> "\\xNN";
- a token that is only part of a UTF-8 character (byte-level BPE splits some characters over
  several tokens, which decode to "\ufffd") is shown as its bytes, e.g. "\\xe2\\x80";
- spaces stay spaces: renderers keep them (the dashboard uses white-space: pre and can show
  them as "·").
The result is plain text; HTML escaping is the renderer's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍"}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table (byte-level BPE writes bytes as these characters)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def make_visible(text: str) -> str:
    """Replace newlines, tabs and other control characters by visible marks."""
    out = []
    for ch in text:
        if ch in VISIBLE:
            out.append(VISIBLE[ch])
        elif ord(ch) < 32 or ord(ch) == 127:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def _raw_bytes(piece: str) -> bytes | None:
    """Bytes of a byte-level BPE piece ('âĢ' -> b'\\xe2\\x80') or of a '<0xE2>' byte-fallback token."""
    if piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
        try:
            return bytes([int(piece[3:5], 16)])
        except ValueError:
            return None
    table = _byte_decoder()
    if piece and all(ch in table for ch in piece):
        return bytes(table[ch] for ch in piece)
    return None


def display_tokens(tokenizer, ids: Iterable[int], visible: bool = True) -> dict[int, str]:
    """Visible text of each distinct token id: {id: text} (visible=False: newlines and tabs kept as they are)."""
    unique = sorted({int(i) for i in ids})
    if not unique:
        return {}
    decoded = tokenizer.batch_decode([[i] for i in unique], skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)
    pieces = tokenizer.convert_ids_to_tokens(unique)
    out = {}
    for token_id, text, piece in zip(unique, decoded, pieces):
        if "\ufffd" in text and piece is not None:
            raw = _raw_bytes(piece)
            if raw is not None:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = "".join(f"\\x{b:02x}" for b in raw)
        out[token_id] = make_visible(text) if visible else text
    return out

