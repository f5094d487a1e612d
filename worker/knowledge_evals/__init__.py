"""Knowledge evals as a worker runs them: the task's service (claim, run, store the report, settle) and
generation through the serving engine in this process (`engine`). What an eval is lives in `evals/`."""
