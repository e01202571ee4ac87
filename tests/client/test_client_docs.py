"""The examples of docs/client.md run as written there, against three node
processes in place of `python -m raftfast.cluster --nodes 3` (their
addresses swapped in for 127.0.0.1:7001...)."""
import contextlib
import io
import os
import re

from tests.support import REPO


def python_blocks():
    with open(os.path.join(REPO, "docs", "client.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_the_examples_in_docs_client_md_run(make_cluster):
    c = make_cluster()
    c.wait_leader()
    blocks = python_blocks()
    assert len(blocks) == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for code in blocks:
            for i in c.ids:
                code = code.replace(f"127.0.0.1:700{i}", c.nodes[i].client_addr)
            exec(compile(code, "docs/client.md", "exec"), {"__name__": "docs_example"})
    lines = out.getvalue().splitlines()
    # The first example's scan matches nothing; the second's lists both
    # keys, in the order of SCAN's hash.
    assert lines[:2] == ["1", "b'hello' 60"]
    assert sorted(lines[2:]) == ["b'greeting'", "b'visits'"]
