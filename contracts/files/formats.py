"""The training-data formats a validated file can be in: the names stored with the file (`files.data_format`),
which the validator decides, the API and the job's preparation check against the method, and the trainer
encodes by.

* `chat`               `{"messages": [...]}` with optional `tools`, `parallel_tool_calls`, `functions`
* `preference`         `{"input": {...}, "preferred_output": [...], "non_preferred_output": [...]}` (DPO)
* `prompt_completion`  `{"prompt": "...", "completion": "..."}`
"""

from __future__ import annotations

CHAT = "chat"
PREFERENCE = "preference"
PROMPT_COMPLETION = "prompt_completion"

#: The formats each fine-tuning method trains on.
FORMATS_FOR_METHOD: dict[str, tuple[str, ...]] = {"supervised": (CHAT, PROMPT_COMPLETION), "dpo": (PREFERENCE,)}
