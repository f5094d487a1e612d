"""Knowledge evaluations (FineTuneBench-style): what a fine-tune taught, and what it broke.

Plain modules, callable without FastAPI or Celery:

* `items`     the canonical eval item and the suite JSONL format
* `spec`      eval specs: validated against the JSON schema, versioned by SHA-256, sources resolved to items
* `scoring`   normalisation and scorers (exact match, contains, yes/no labels, abstention, LLM judge)
* `builtin`   built-in synthetic suites generated from a seed, and the training-file builder
* `finetunebench`  importer for the FineTuneBench CSV layout
* `responses` scoring-only mode over files of existing responses
* `report`    per-split metrics, Wilson intervals, headline means, forgetting; the report JSON
* `runner`    generation through the serving engine, base vs tuned, with identical greedy decoding
* `charts`    PNG charts (loss curve, base-vs-tuned bars)
"""
