"""Options of the core tests."""


def pytest_addoption(parser):
    parser.addoption("--rewrite", action="store_true", default=False,
                     help="rewrite tests/core/testdata/*.txt with the actual output "
                          "(same as RAFTFAST_REWRITE=1)")
