"""The `sample` namespace a grader reads: what the model answered."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One model output: its text and the tool calls it made (OpenAI's chat `tool_calls` shape)."""

    output_text: str
    output_tools: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def output_json(self) -> Any:
        """The text parsed as JSON (an object or array), or None when it is not JSON."""
        text = self.output_text.strip()
        if not text or text[0] not in "[{":
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    def namespace(self) -> dict[str, Any]:
        """`sample` as templates and python graders see it (`output_json` is null when the text is not JSON)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.output_text}
        if self.output_tools:
            message["tool_calls"] = list(self.output_tools)
        return {"output_text": self.output_text, "output_json": self.output_json,
                "output_tools": list(self.output_tools), "choices": [{"index": 0, "message": message}]}
