"""Training as plain modules, callable without Celery or the database.

The loop (`trainer`) and its parts: `kernels` (precision, attention kernel, loss path), `adapters` (the peft
model and adapter files), `objectives` (SFT, DPO and rehearsal losses; `loss` the chunked cross-entropy,
`attention` the packed-row kernels), `optimization` (optimizer and schedule), `distributed` (DDP/FSDP),
`evaluation` (validation, the final pass), `checkpoints` (exact resume), `control` (what the loop and its
caller exchange). Data: `data` (tokenisation with assistant-only labels), `batching` (padded and packed rows),
`rehearsal` (the base model's own answers to general prompts). Memory: `memory_estimate` (a step's peak from
the config) and `memory_plan` (what follows from it). `learning` words what a run learned for the job's events.
"""
