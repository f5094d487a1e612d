"""Graders (OpenAI's grader types): what scores a model's sample for reinforcement fine-tuning and for
`/v1/fine_tuning/alpha/graders/run`.

A domain library: it imports only `contracts` and third-party libraries (never api, worker, serving or db).

* `templates`     `{{item.*}}` / `{{sample.*}}` templates: parsing, the item fields they need, rendering
* `samples`       the sample namespace built from a model's output (text, parsed JSON, tool calls)
* `similarity`    text_similarity's metrics (rapidfuzz, sacrebleu, nltk, rouge-score, MiniLM embeddings)
* `formula`       a multi grader's calculate_output, by a safe expression evaluator
* `model_graders` score_model and label_model against any OpenAI-compatible chat endpoint
* `sandbox`       the python grader's isolated child process (`sandbox_child` is its inside)
* `grading`       one entry point: check a grader, grade samples, OpenAI's run-response shape
"""
