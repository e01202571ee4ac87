"""Runs every script in tests/core/testdata/ through the interaction driver
(tests/core/interaction.py) and compares each command's output with the
output written after its `----`.

After a deliberate change of behaviour, regenerate the expected output and
read the diff:
    RAFTFAST_REWRITE=1 python -m pytest tests/core/test_interaction.py
    python -m pytest tests/core/test_interaction.py --rewrite
(--rewrite exists when pytest is pointed at tests/core or a file in it,
where its conftest.py is read before the command line.)  The commands a
script may use are listed in interaction.py.
"""
import difflib
import os
import pathlib

import pytest

from tests.core.datadriven import Command, ScriptError, parse_script, render_script
from tests.core.interaction import Env

TESTDATA = pathlib.Path(__file__).parent / "testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.fixture
def rewrite(request):
    return (os.environ.get("RAFTFAST_REWRITE") == "1"
            or request.config.getoption("--rewrite", default=False))


def test_there_are_scripts():
    assert len(SCRIPTS) >= 15


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_a_rewrite_keeps_what_it_does_not_own(path):
    """Rendering a script with its own expected output gives the file back
    (comments and blank lines included), so a rewrite changes outputs only."""
    text = path.read_text()
    items = parse_script(text)
    assert render_script(items, [c.expected for c in items if isinstance(c, Command)]) == text


def test_a_command_without_its_separator_is_refused():
    with pytest.raises(ScriptError, match="line 2"):
        parse_script("# comment\nstatus 1\nok\n")


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_script(path, rewrite):
    items = parse_script(path.read_text())
    env = Env()
    outputs = []
    for item in items:
        if isinstance(item, str):
            continue
        try:
            actual = env.run(item.text)
        except Exception as e:
            raise AssertionError(f"{path.name}:{item.line_no}: {item.text}: "
                                 f"{type(e).__name__}: {e}") from e
        outputs.append(actual)
        if not rewrite and actual != item.expected:
            diff = "\n".join(difflib.unified_diff(item.expected, actual, "expected", "actual",
                                                  lineterm=""))
            pytest.fail(f"{path.name}:{item.line_no}: {item.text}\n{diff}", pytrace=False)
    if rewrite:
        path.write_text(render_script(items, outputs))


def test_a_misspelt_option_is_an_error_not_ignored():
    with pytest.raises(ScriptError, match="votrs"):
        Env().run("add-nodes 3 votrs=(1,2,3)")
