"""The README stays true: its configuration table, its two set-up commands, and what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.settings import settings_table, variables

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def setup_commands() -> list[str]:
    section = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_the_readme_configuration_table_is_generated_from_the_settings() -> None:
    table = README.split("<!-- settings-table:start -->\n", 1)[1].split("\n<!-- settings-table:end -->", 1)[0]
    assert table == settings_table(), "regenerate it with: python -m contracts.settings"
    assert all(f"`FTAAS_{flat.upper()}`" in table for _, _, flat in variables())


def test_the_readme_has_exactly_two_setup_commands_and_ci_runs_the_second() -> None:
    start, test = setup_commands()
    assert "ftaas up" in start and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test
