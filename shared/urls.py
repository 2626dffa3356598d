"""Reading a URL from configuration: ``urlsplit`` refuses some defects only when a part is read."""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit


def split_url(url: str) -> SplitResult | None:
    """``url`` split, or ``None`` when it cannot be: an unclosed IPv6 bracket, or a port that is not a
    number or is out of range (``urlsplit`` raises for the port only when it is read)."""
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        return None
    return parts
