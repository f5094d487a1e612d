"""Knowledge evals (FineTuneBench-style): what a fine-tune taught, and what it broke.

A domain library: it imports only `contracts` and third-party libraries (never api, worker, serving or db),
so the API validates eval requests with it, workers run evals with it and `ftaas eval` scores files with it.

* `items`, `jsonl`   the canonical eval item and the suite JSONL format
* `spec`             eval specs: validated against the JSON schema (`schemas/`), versioned by SHA-256
* `sources`          where a spec's items come from (built-in suites, uploaded files, FineTuneBench CSVs)
* `requests`         an eval request's spec and items, resolved and checked (what the API validates)
* `builtin`          built-in synthetic suites generated from a seed, and their training files
* `normalize`        answer normalisation (case, punctuation, numbers, dates)
* `scoring`          scorers: exact match, contains, yes/no labels, abstention, the LLM judge
* `judge`            the LLM judge's client: any OpenAI-compatible endpoint, through the official SDK
* `run`              one eval run (base vs tuned) through any `Generator`; the engine's is in the worker
* `report`           per-split metrics, Wilson intervals, headline means, forgetting; the report JSON
* `artifacts`        the names of a run's result files
* `charts`           PNG charts (loss curve, base-vs-tuned bars)
* `finetunebench`    importer for FineTuneBench's CSV layout
* `responses`        scoring-only mode over files of existing responses
"""
