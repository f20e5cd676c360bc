"""Block Kit → terminal text, so the shell shows what Slack would show."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

_MENTION = re.compile(r"<([@#!])([^>|]+)(?:\|([^>]*))?>")


def mrkdwn_to_text(text: str) -> str:
    """Mentions and links to readable words; Slack's escapes undone."""

    def mention(match: re.Match[str]) -> str:
        sigil, target, label = match.groups()
        if label:
            return label if label.startswith("@") else f"{'@' if sigil == '@' else ''}{label}"
        if sigil == "!":
            return "@" + target.split("^")[-1]
        return f"{'@' if sigil == '@' else '#'}{target}"

    text = _MENTION.sub(mention, text)
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _text(obj: dict[str, Any] | None) -> str:
    return mrkdwn_to_text(obj.get("text", "")) if obj else ""


def blocks_to_text(blocks: Iterable[dict[str, Any]] | None, fallback: str = "") -> str:
    lines: list[str] = []
    for block in blocks or ():
        kind = block.get("type")
        if kind == "header":
            title = _text(block.get("text"))
            lines += [title, "=" * len(title)]
        elif kind == "section":
            if block.get("text"):
                lines.append(_text(block["text"]))
            for field in block.get("fields") or ():
                lines += ["", _text(field)]
        elif kind == "context":
            lines.append(
                "  " + " · ".join(_text(e) for e in block.get("elements", []) if "text" in e)
            )
        elif kind == "divider":
            lines.append("-" * 40)
        elif kind == "actions":
            lines.append("  ".join(f"[{_text(e.get('text'))}]" for e in block.get("elements", [])))
        elif kind == "image":
            lines.append(f"[image: {block.get('alt_text', '')}]")
        else:
            lines.append(f"[{kind} block]")
    return "\n".join(lines) if lines else mrkdwn_to_text(fallback)
