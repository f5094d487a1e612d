"""Persistence: the tables (`tables`), sessions and transactions (`session`), and one module per kind of row
that owns its queries and state changes (`files`, `jobs`, `checkpoints`, `events`, `models`, `projects`,
`knowledge_evals`, `adapter_operations`, `webhooks`, `idempotency`); the lease model every claimed work shares
(`leased`), the job state machine (`states`), the transactional outbox (`outbox`), cursor pagination
(`pagination`), ids (`ids`), migrations (`migrate`) and the guard against stalled connections (`stalls`)."""
