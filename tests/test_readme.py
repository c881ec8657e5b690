"""Every console example of the README runs as written and prints what the README shows.

See readme_examples.py for the rules; a failure names the README line of the command.
"""

from __future__ import annotations

import pytest
from readme_examples import ROOT, examples, matches, run, workspace

EXAMPLES = examples((ROOT / "README.md").read_text())


def test_the_readme_has_runnable_examples():
    assert len(EXAMPLES) >= 25 and any("upsample" in e.command for e in EXAMPLES)


@pytest.mark.slow
def test_every_console_example_runs_as_written(tmp_path):
    env = workspace(tmp_path)
    for example in EXAMPLES:
        res = run(example, tmp_path, env)
        printed = res.stdout.splitlines()
        where = f"README.md:{example.line}: $ {example.command}\n{res.stdout}"
        assert res.returncode == example.exit_code, where
        missing = matches(example.expected, printed)
        assert missing is None, f"{where}\nnot printed: {missing!r}"
