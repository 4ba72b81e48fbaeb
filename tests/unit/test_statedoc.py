"""The state docs are generated from the table and the committed copies are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ironworks import states
from ironworks.tools import statedoc

REPO = Path(__file__).resolve().parents[2]


def test_committed_docs_match_the_state_table() -> None:
    assert statedoc.stale(REPO / "docs") == {}, "run `python -m ironworks.tools.statedoc`"


def test_check_command_passes_in_the_repo() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "ironworks.tools.statedoc", "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert (run.returncode, run.stderr) == (0, "")


def test_generate_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert statedoc.main(["--docs-dir", str(tmp_path)]) == 0
    assert (tmp_path / "states.dot").read_text(encoding="utf-8") == states.to_dot()
    assert statedoc.main(["--check", "--docs-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().err == ""


def test_check_fails_on_an_edited_file_and_says_how_to_fix_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statedoc.write(tmp_path)
    md = tmp_path / "states.md"
    md.write_text(md.read_text(encoding="utf-8").replace("`wait call-back`", "`wait callback`"))
    assert statedoc.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{md} is out of date" in err
    assert "-### `wait callback` (wait)" in err
    assert "Run `python -m ironworks.tools.statedoc`" in err


def test_check_fails_on_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    statedoc.write(tmp_path)
    (tmp_path / "states.dot").unlink()
    assert statedoc.main(["--check", "--docs-dir", str(tmp_path)]) == 1
    assert f"{tmp_path / 'states.dot'} is out of date with ironworks/states.py: missing" in capsys.readouterr().err


def test_markdown_has_the_diagram_and_one_row_per_transition() -> None:
    text = statedoc.render_markdown()
    assert f"```mermaid\n{states.to_mermaid()}```\n" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert len(rows) == len(states.TRANSITIONS)
    for state in states.State:
        assert f"### `{state.value}` (" in text
    # the target column is computed by stepping the machine
    assert "| `clean` | user | `clean` | `cleaning` | `manageable` |" in text
    assert "| `unhold` | user | `unhold` | `clean wait` | unchanged |" in text
    assert "| `deploy` | user | `active`, `deploy` | `deploying` | `active` |" in text
