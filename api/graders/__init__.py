"""Routes /v1/fine_tuning/alpha/graders/run and /validate (OpenAI's grader-testing API)."""
