"""Fixtures shared by more than one test file."""
import shutil
import tempfile

import pytest


@pytest.fixture
def root():
    """A fresh directory with a short path (a Unix socket's path must fit
    in about 100 bytes), removed after the test."""
    d = tempfile.mkdtemp(prefix="rf")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_cluster():
    """make_cluster(n=3, transport="unix", proxied=False, **Cluster options)
    starts a cluster of real node processes in a fresh short directory and
    returns it; proxied=True routes every peer link through a FaultProxy
    (chaos.ProxiedCluster).  Every cluster made is stopped and its
    directory removed after the test."""
    # Imported here: the core's tests, which load this file too, need no
    # processes, sockets or event loops.
    from tests.support.chaos import ProxiedCluster
    from tests.support.harness import Cluster

    made = []

    def make(n=3, transport="unix", proxied=False, **kw):
        c = (ProxiedCluster if proxied else Cluster)(tempfile.mkdtemp(prefix="rf"), n=n,
                                                      transport=transport, **kw)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()
        shutil.rmtree(c.root, ignore_errors=True)
