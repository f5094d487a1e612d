"""Public identifiers.

Every id is `<prefix><26 Crockford base32 characters>`: 48 bits of milliseconds since the epoch, then
80 random bits (the ULID layout). Sorting ids sorts objects by creation time, so list endpoints order
and paginate on the id alone: `after=<id>` needs no lookup and still works once that object is deleted.
Within one process ids are strictly increasing; across processes, ids minted in the same millisecond
order arbitrarily but consistently. The random part keeps ids unguessable.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80
_lock = threading.Lock()
_last: int = 0

PROJECT = "proj_"
API_KEY = "key_"
FILE = "file-"
JOB = "ftjob-"
EVENT = "ftevent-"
CHECKPOINT = "ftckpt_"
MODEL_UID = "mdl_"
KNOWLEDGE_EVAL = "keval_"
ADAPTER_OPERATION = "adop_"
WEBHOOK_ENDPOINT = "whep_"
WEBHOOK_EVENT = "evt_"
CHAT_COMPLETION = "chatcmpl-"
TRAINING_SESSION = "tsess_"
TRAINING_REQUEST = "treq_"
TRAINING_CHECKPOINT = "tckpt_"


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """A fresh, time-ordered, unguessable id with the given prefix."""
    global _last
    with _lock:
        value = (int(time.time() * 1000) << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS)
        if value <= _last:
            # Same millisecond as the previous id: keep the sequence strictly increasing.
            value = _last + 1
        _last = value
    return prefix + _encode(value, 26)


def short_model_suffix() -> str:
    """8 random alphanumerics: the last segment of `ft:{base}:{project}:{suffix}:{id}` model names."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def has_shape(value: str, prefix: str) -> bool:
    """True if `value` could be an id of this kind (used to reject malformed `after` cursors)."""
    body = value[len(prefix):]
    return value.startswith(prefix) and len(body) == 26 and all(c in _ALPHABET for c in body)
