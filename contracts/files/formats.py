"""The training-data formats a validated file can be in: the names stored with the file (`files.data_format`),
which the validator decides, the API and the job's preparation check against the method, and the trainer
encodes by.

* `chat`               `{"messages": [...]}` with optional `tools`, `parallel_tool_calls`, `functions`
* `preference`         `{"input": {...}, "preferred_output": [...], "non_preferred_output": [...]}` (DPO)
* `prompt_completion`  `{"prompt": "...", "completion": "..."}`
* `reinforcement`      `{"messages": [...], ...any other fields}` whose messages end before the answer (the
                       model writes it; a grader scores it and reads the other fields as `{{item.<field>}}`)
"""

from __future__ import annotations

CHAT = "chat"
PREFERENCE = "preference"
PROMPT_COMPLETION = "prompt_completion"
REINFORCEMENT = "reinforcement"

#: The formats each fine-tuning method trains on.
FORMATS_FOR_METHOD: dict[str, tuple[str, ...]] = {"supervised": (CHAT, PROMPT_COMPLETION), "dpo": (PREFERENCE,),
                                                  "reinforcement": (REINFORCEMENT,)}
