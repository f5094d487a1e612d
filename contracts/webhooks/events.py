"""The webhook event types ftaas sends, and the payload every one carries.

Fine-tuning jobs send OpenAI's types; knowledge evals and adapter operations (ftaas's own work) follow the
same pattern. Every payload is `{"id": "evt_...", "object": "event", "created_at": <unix s>, "type": ...,
"data": {"id": <the job, eval or operation>}}`: like OpenAI's, it names what changed and the receiver
fetches it with the API.
"""

from __future__ import annotations

#: (the kind of work, as its event types start) for each kind that announces its end
WORK_KINDS = ("fine_tuning.job", "knowledge_eval", "adapter_operation")
#: the statuses that end work and are announced
ENDINGS = ("succeeded", "failed", "cancelled")
EVENT_TYPES = tuple(f"{kind}.{ending}" for kind in WORK_KINDS for ending in ENDINGS)
