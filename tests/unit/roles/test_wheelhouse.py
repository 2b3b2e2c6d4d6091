# -*- coding: utf-8 -*-
# Copyright: fleetproxy contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The proxy role's controller-side wheelhouse builder (roles/proxy/files/wheelhouse.py).

Offline: wheels are small fakes written here, pip is never run except where a test
replaces it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import tarfile
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, '..', '..', '..', 'roles', 'proxy', 'files', 'wheelhouse.py')


@pytest.fixture(scope='module')
def wh():
    spec = importlib.util.spec_from_file_location('fleetproxy_wheelhouse', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_wheel(directory, name, version, requires=(), tag='py3-none-any'):
    """A wheel with just enough METADATA for the builder."""
    dist = name.replace('-', '_')
    path = os.path.join(directory, '%s-%s-%s.whl' % (dist, version, tag))
    meta = ['Metadata-Version: 2.1', 'Name: %s' % name, 'Version: %s' % version]
    meta += ['Requires-Dist: %s' % r for r in requires]
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('%s-%s.dist-info/METADATA' % (dist, version), '\n'.join(meta) + '\n')
    return path


TARGET_310 = {'python': '3.10.12', 'machine': 'x86_64', 'glibc': '2.35'}
TARGET_311 = {'python': '3.11.2', 'machine': 'x86_64', 'glibc': '2.36'}


def test_platform_tags_cover_every_manylinux_up_to_the_host_glibc(wh):
    tags = wh.platform_tags('x86_64', '2.28')
    assert tags[0] == 'manylinux_2_28_x86_64'
    assert 'manylinux_2_5_x86_64' in tags and 'manylinux_2_29_x86_64' not in tags
    assert {'manylinux2014_x86_64', 'manylinux2010_x86_64', 'manylinux1_x86_64'} <= set(tags)
    arm = wh.platform_tags('aarch64', '2.35')
    assert 'manylinux2014_aarch64' in arm and 'manylinux1_aarch64' not in arm
    with pytest.raises(wh.WheelhouseError):
        wh.platform_tags('x86_64', 'musl 1.2')


def test_closure_uses_the_target_python_for_markers(wh, tmp_path):
    """async-timeout is needed on 3.10 only; a controller's own markers would miss it."""
    d = str(tmp_path)
    fake_wheel(d, 'app', '1.0', ['lib>=2', 'async-timeout>=4; python_version < "3.11"', 'winonly; sys_platform == "win32"'])
    fake_wheel(d, 'lib', '2.1', ['extra-dep; extra == "fast"'])
    roots = [wh.Requirement('app==1.0')]

    needed, missing = wh.closure(wh.scan(d), roots, wh.marker_environment(TARGET_311))
    assert sorted(needed) == ['app', 'lib'] and missing == []

    needed, missing = wh.closure(wh.scan(d), roots, wh.marker_environment(TARGET_310))
    assert [str(r) for r in missing] == ['async-timeout>=4; python_version < "3.11"']
    fake_wheel(d, 'async-timeout', '5.0.1')
    needed, missing = wh.closure(wh.scan(d), roots, wh.marker_environment(TARGET_310))
    assert sorted(needed) == ['app', 'async-timeout', 'lib'] and missing == []


def test_closure_follows_requested_extras_and_reports_version_conflicts(wh, tmp_path):
    d = str(tmp_path)
    fake_wheel(d, 'app', '1.0', ['lib[fast]>=2', 'pinned<2'])
    fake_wheel(d, 'lib', '2.0', ['speedup; extra == "fast"'])
    fake_wheel(d, 'speedup', '1.0')
    fake_wheel(d, 'pinned', '3.0')
    needed, missing = wh.closure(wh.scan(d), [wh.Requirement('app')], wh.marker_environment(TARGET_311))
    assert 'speedup' in needed
    assert [str(r) for r in missing] == ['pinned<2']


def test_build_wheelhouse_downloads_until_closed_and_pins(wh, tmp_path, monkeypatch):
    """The first download misses a marker-only dependency; the builder asks for it."""
    build_dir = tmp_path / 'src-x'
    build_dir.mkdir()
    wheel = fake_wheel(str(tmp_path), 'fleetproxy', '0.1.0', ['lib', 'async-timeout; python_version < "3.11"'])
    calls = []

    def fake_pip(python, args):
        calls.append(args)
        dest = args[args.index('--dest') + 1]
        assert args[args.index('--python-version') + 1] == '3.10'
        assert 'manylinux_2_35_x86_64' in args
        if len(calls) == 1:
            fake_wheel(dest, 'fleetproxy', '0.1.0', ['lib', 'async-timeout; python_version < "3.11"'])
            fake_wheel(dest, 'lib', '1.0')
            fake_wheel(dest, 'pip', '24.0')
            fake_wheel(dest, 'unrelated', '1.0')  # fetched, not needed: pruned
        else:
            assert args[-1] == 'async-timeout'
            fake_wheel(dest, 'async-timeout', '5.0.1')

    monkeypatch.setattr(wh, 'run_pip', fake_pip)
    key, directory, built = wh.build_wheelhouse('python', wheel, str(build_dir), TARGET_310, [])
    assert (key, built) == ('cp310-x86_64-glibc2.35', True)
    with open(os.path.join(directory, 'requirements.txt'), encoding='utf-8') as handle:
        pins = [line.strip() for line in handle if not line.startswith('#')]
    assert pins == ['async-timeout==5.0.1', 'fleetproxy==0.1.0', 'lib==1.0', 'pip==24.0']
    assert not any(name.startswith('unrelated') for name in os.listdir(directory))
    with tarfile.open(os.path.join(directory, 'wheelhouse.tar')) as archive:
        names = archive.getnames()
    assert names[-1] == 'requirements.txt' and len(names) == 5

    # Cached: no pip at all the second time.
    monkeypatch.setattr(wh, 'run_pip', lambda *a: pytest.fail('pip ran for a cached wheelhouse'))
    assert wh.build_wheelhouse('python', wheel, str(build_dir), TARGET_310, [])[2] is False


def test_source_digest_sees_content_and_names_but_not_caches(wh, tmp_path):
    src = tmp_path / 'proxy'
    (src / 'src' / 'pkg' / '__pycache__').mkdir(parents=True)
    (src / 'pyproject.toml').write_text('[project]\nname = "x"\n')
    (src / 'src' / 'pkg' / 'a.py').write_text('A = 1\n')
    first = wh.source_digest(str(src))
    (src / 'src' / 'pkg' / '__pycache__' / 'a.cpython-311.pyc').write_bytes(b'junk')
    (src / 'tests').mkdir()
    (src / 'tests' / 'test_a.py').write_text('pass\n')
    assert wh.source_digest(str(src)) == first
    (src / 'src' / 'pkg' / 'a.py').write_text('A = 2\n')
    assert wh.source_digest(str(src)) != first


def test_main_reports_errors_as_json(wh, tmp_path, capsys):
    assert wh.main(['--source', str(tmp_path), '--cache', str(tmp_path / 'c'), '--targets', '[]']) == 1
    out = json.loads(capsys.readouterr().out)
    assert out['failed'] is True and 'pyproject.toml' in out['msg']
