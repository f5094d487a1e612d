"""The serving engine: many adapters batched on one base model, continuous batching, per-sequence KV caches.

`service` (the engine behind the inference routes: resolution, adapter leases, tokenization, submission),
`engine` (the batching loop), `model` (the forward pass of every served family), `kvcache` (keys and values
under a budget; the prompt-prefix cache), adapters as the engine computes them (`adapter_weights`, `lora`,
`ia3`, `prefixes`, `slots`), `adapters` (the tiered adapter cache), `generation` (streamed text, stops,
tool calls), `grammar` (constrained decoding), `resolution` (model names to base and adapter), `placement`
(dtype and device), `metrics`, and `reference` (transformers' own generate, for what the engine refuses).
"""
