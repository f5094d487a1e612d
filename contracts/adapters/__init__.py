"""The adapter folder format (PEFT's, plus ftaas' compressed weights): `files` names, reads and checks
it; `compeft` is the compressed weights' stored form; `archive` unpacks uploaded adapter archives safely."""
