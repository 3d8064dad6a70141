"""The keys page tokens are signed with, and how they are rotated without breaking anyone's paging.

One key set per database, kept in its `settings` table, so every replica signs and checks with the
same keys (a token from replica A works on B). A set holds at most three keys, newest first, each
with the time it starts signing:

* the current key signs every new token;
* a rotated-in key (`contimg-server rotate-page-token-key`) is accepted at once but signs only from
  `signs_from_us`, a grace period after the rotation that is longer than the interval at which
  every replica reloads the set (housekeeping.py), so no replica issues a token that another
  cannot check yet;
* the previous key is still accepted, so a client paging across a rotation finishes its listing.

A token signed by a key rotated out twice gets INVALID_PAGE_TOKEN: restart from the first page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

KEPT = 3
# How often every replica reloads the set (housekeeping.py); a rotated-in key signs GRACE_S after
# the rotation, several reloads later, so each replica accepts it before any signs with it.
RELOAD_S = 20.0
GRACE_S = 90.0
MIN_KEY_BYTES = 16
SETTING = "page_token_keys"
LEGACY_SETTING = "page_token_secret"  # the single key of schema versions before key sets


class PageKey(NamedTuple):
    key: bytes
    signs_from_us: int


def decode_keys(stored: bytes | None, legacy: bytes) -> tuple[PageKey, ...]:
    """The key set kept in settings, or the database's original single key when none was rotated."""
    if not stored:
        return (PageKey(legacy, 0),)
    return tuple(PageKey(bytes.fromhex(k["key"]), int(k["signs_from_us"])) for k in json.loads(stored))


def encode_keys(keys: Sequence[PageKey]) -> bytes:
    return json.dumps([{"key": k.key.hex(), "signs_from_us": k.signs_from_us} for k in keys]).encode()


def rotated(keys: Sequence[PageKey], new: bytes, signs_from_us: int) -> tuple[PageKey, ...]:
    """`keys` with `new` added, signing from `signs_from_us`; the oldest beyond KEPT dropped."""
    if len(new) < MIN_KEY_BYTES:
        raise ValueError(f"a page-token key needs at least {MIN_KEY_BYTES} bytes, not {len(new)}")
    if any(k.key == new for k in keys):
        raise ValueError("that key is already in the set")
    return (PageKey(new, signs_from_us), *keys)[:KEPT]


def signing_key(keys: Sequence[PageKey], now_us: int) -> PageKey:
    """The newest key already signing at `now_us` (the oldest, if none is yet)."""
    for k in keys:
        if k.signs_from_us <= now_us:
            return k
    return keys[-1]
