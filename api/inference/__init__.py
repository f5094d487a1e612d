"""/v1/chat/completions and /v1/completions (streamed too), answered by the engine behind
contracts.inference.backend."""
