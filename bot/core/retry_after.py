"""One reading of ``Retry-After``, for Atlas and Slack alike: seconds or an HTTP date, made safe.

RFC 9110 §10.2.3 allows a whole number of seconds or an HTTP-date. What arrives is looser:
fractions, negative numbers, ``inf``, ``nan``, dates in the past, garbage from a proxy. Every
caller turns the answer into a sleep or a ``timedelta``, where ``inf`` overflows and ``nan``
compares false with everything, so this is the one place that decides what a value means:

- missing, blank or unreadable (``nan`` included): ``None``, the caller's own back-off applies;
- negative, or a date already past: ``0``;
- anything longer than ``cap`` (``inf`` included): ``cap``, so one bad header cannot park an
  alert for a year.
"""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

# An hour: longer than any wait Atlas or Slack document, short enough that a wrong header
# costs at most an hour's delay.
MAX_RETRY_AFTER = 3600.0


def parse_retry_after(
    value: str | None, *, now: float | None = None, cap: float = MAX_RETRY_AFTER
) -> float | None:
    """Seconds to wait for a ``Retry-After`` header value, in ``[0, cap]``, or ``None``.

    ``now`` (epoch seconds, default the wall clock) is what an HTTP date is measured from.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:  # an HTTP date is always GMT; obsolete forms may omit it
            return None
        seconds = moment.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)
