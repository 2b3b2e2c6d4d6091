"""Fixtures for the namespace tests: a LAN per test, torn down also on failure."""

from __future__ import annotations

import shutil

import pytest

from fleetproxy.vrrp import lab as labmod

_reason: str | None = None
_checked = False


def _lab_unavailable() -> str | None:
    global _reason, _checked
    if not _checked:
        _checked = True
        _reason = labmod.available()
        if _reason is None:
            labmod.remove_leftovers()
    return _reason


def _make(request, nodes: int):
    reason = _lab_unavailable()
    if reason:
        pytest.skip(f"VRRP namespace tests skipped: {reason}")
    lab = labmod.Lab(nodes)
    request.addfinalizer(lab.close)
    lab.build()
    return lab


@pytest.fixture
def lab2(request):
    return _make(request, 2)


@pytest.fixture
def lab3(request):
    return _make(request, 3)


@pytest.fixture
def keepalived_bin():
    path = shutil.which("keepalived")
    if path is None:
        pytest.skip("keepalived interop skipped: the keepalived binary is not installed (apt-get install keepalived)")
    return path
