"""Fixtures of the module tests: see harness.py."""

from __future__ import annotations

import pytest

from harness import Backend, CollectionTree, Proxy, server_def

_TREE = {}


def pytest_configure(config):
    tree = CollectionTree()
    tree.install()
    _TREE['tree'] = tree


def pytest_unconfigure(config):
    tree = _TREE.pop('tree', None)
    if tree is not None:
        tree.remove()


@pytest.fixture
def backends():
    """``backends(n)`` -> n started HTTP backends named b1..bn (stopped after the test)."""
    started = []

    def make(count=2, prefix='b'):
        new = [Backend('%s%d' % (prefix, len(started) + i + 1)) for i in range(count)]
        started.extend(new)
        return new

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def proxy_factory():
    """``proxy_factory(servers, ...)`` -> a started :class:`harness.Proxy` (stopped after)."""
    started = []

    def make(servers, **kwargs):
        p = Proxy(servers, **kwargs)
        started.append(p)
        return p.start()

    yield make
    for p in started:
        p.cleanup()


CHECK = {'check': True, 'inter': '100ms', 'rise': 1, 'fall': 1}


@pytest.fixture(scope='module')
def shared():
    """One proxy per test file for tests that change nothing: ``app`` has s1 and s2
    (checked, up, weight 1) and s3 (weight 200, no check)."""
    started = [Backend('b1'), Backend('b2')]
    proxy = Proxy([server_def('s1', started[0].address, **CHECK), server_def('s2', started[1].address, **CHECK),
                   server_def('s3', started[1].address, weight=200)])
    try:
        proxy.start()
        proxy.wait_health('s1')
        proxy.wait_health('s2')
        proxy.b1, proxy.b2 = started
        yield proxy
    finally:
        proxy.cleanup()
        for b in started:
            b.stop()


@pytest.fixture
def two(backends, proxy_factory):
    """A proxy whose backend ``app`` has s1 and s2 (checked, up) on two live backends."""
    b1, b2 = backends(2)
    proxy = proxy_factory([server_def('s1', b1.address, **CHECK), server_def('s2', b2.address, **CHECK)])
    proxy.wait_health('s1')
    proxy.wait_health('s2')
    proxy.b1, proxy.b2 = b1, b2
    return proxy
