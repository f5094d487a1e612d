"""The OpenAI-compatible control plane (FastAPI), the API process's own code.

One package per resource, each `router` (routes: parse, authenticate, call one service method, answer),
`schemas` (the wire models) and `service` (the logic, callable without FastAPI): `files`, `fine_tuning`,
`models`, `knowledge_evals`, `adapter_operations`, `webhooks`, `health`, and `inference` (the chat and
completions routes, over the engine interface of contracts.inference.backend). Around them: `app` (the
application and its services), `dependencies` (the authenticated caller, one thread-pool hop per request),
`errors` (the error taxonomy mapped to OpenAI's envelope, once), `middleware`, `pagination` (cursor lists),
`responses`, `rate_limits`, `leased_work` (get, list and cancel of claimed work).
"""
