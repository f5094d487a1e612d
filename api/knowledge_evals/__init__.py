"""/v1/knowledge_evals: create, list, retrieve, cancel, the result files, built-in suites and their
training files."""
