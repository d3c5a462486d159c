"""Small helpers every connector needs: HTML to text, timestamps, pseudonymous authors."""

from __future__ import annotations

import hashlib
import hmac
import html
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

from pydantic import SecretStr

_BLOCKS = {"p", "div", "br", "li", "blockquote", "pre", "h1", "h2", "h3", "h4", "h5", "h6", "tr"}
_SKIP = {"script", "style", "head"}
_SPACES = re.compile(r"[ \t\r\f\v]+")
_LINES = re.compile(r"\n\s*\n+")


class _TextParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skipping += 1
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skipping = max(self._skipping - 1, 0)
        elif tag in _BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_to_text(markup: str | None) -> str:
    """Readable text of an HTML fragment (Mastodon content, feed summaries): tags out, entities decoded."""
    if not markup:
        return ""
    if "<" not in markup:
        return html.unescape(markup).strip()
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.parts)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _LINES.sub("\n\n", "\n".join(lines)).strip()


def parse_timestamp(value: str | int | float | None) -> datetime:
    """A platform timestamp (ISO 8601 or unix seconds) as aware UTC; ValueError when unreadable."""
    if value is None or value == "":
        raise ValueError("no timestamp")
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), UTC)
    text = str(value).strip()
    # Facebook writes +0000 without a colon; Python 3.11 reads that too, but not a bare "Z" in all forms.
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def iso_mark(value: datetime) -> str:
    """A sortable text form of a UTC instant (lexical order == time order), used in cursors."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Pseudonymiser:
    """Replaces author handles by a keyed hash when a key is configured.

    A keyed HMAC (not a plain hash) so nobody without the key can confirm a guess
    of who wrote a post; the same handle keeps the same label, so repeat authors
    can still be counted.
    """

    def __init__(self, key: SecretStr | None) -> None:
        self._key = key.get_secret_value().encode() if key is not None else None

    @property
    def hides(self) -> bool:
        """Whether handles are replaced: a connector then builds post links without them where it can."""
        return self._key is not None

    def __call__(self, handle: str | None) -> str | None:
        if not handle:
            return None
        if self._key is None:
            return handle
        digest = hmac.new(self._key, handle.strip().lower().encode(), hashlib.sha256).hexdigest()
        return f"anon:{digest[:20]}"
