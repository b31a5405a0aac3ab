"""Rendering a results JSONL file for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from rich.table import Table


def _text(response: dict[str, Any]) -> str:
    if "embedding" in response:
        values = response["embedding"].get("values", [])
        head = ", ".join(f"{v:.3f}" for v in values[:4])
        return f"[{head}, …] ({len(values)} dimensions)"
    parts = []
    for cand in response.get("candidates", [])[:1]:
        for part in cand.get("content", {}).get("parts", []):
            if "text" in part and not part.get("thought"):
                parts.append(part["text"])
            elif isinstance(part.get("functionCall"), dict):  # shown as name({"arg": …})
                call = part["functionCall"]
                args = orjson.dumps(call.get("args") or {}).decode()
                parts.append(f"{call.get('name')}({args})")
    return "".join(parts)


def render_results(path: Path, *, width: int = 400) -> Table:
    table = Table(title=str(path), show_lines=True)
    table.add_column("key", no_wrap=True)
    table.add_column("outcome")
    table.add_column("text / error")
    table.add_column("tokens (in+out)", justify="right")
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                table.add_row(
                    f"line {n}", "[red]unreadable[/]", raw[:width].decode(errors="replace"), ""
                )
                continue
            key = str(line.get("key", f"line {n}"))
            if "response" in line:
                response = line["response"]
                usage = response.get("usageMetadata", {})
                cands = response.get("candidates", [{}])
                reason = cands[0].get("finishReason", "") if cands else ""
                tokens = (
                    f"{usage.get('promptTokenCount', 0)}+{usage.get('candidatesTokenCount', 0)}"
                    if usage
                    else str(response.get("tokenCount", ""))
                )
                text = _text(response)
                if len(text) > width:
                    text = text[:width] + "…"
                table.add_row(key, f"[green]ok[/] {reason}", text, tokens)
            else:
                err = line.get("error", {})
                table.add_row(
                    key, f"[red]{err.get('status', 'error')}[/]", str(err.get("message", "")), ""
                )
    return table
