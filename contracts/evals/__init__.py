"""Knowledge evals: spec validation and suite building (`spec`), sources and items (`sources`, `items`),
built-in suites (`builtin`), answer normalisation (`normalize`) and scorers (`scoring`): everything the API
needs to validate an eval request, and the worker to score one."""
