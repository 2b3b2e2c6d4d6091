#!/usr/bin/env python
"""Build fleetproxy wheelhouses on the Ansible controller.

The proxy role runs this once per play on the controller (``delegate_to: localhost``).
It builds the fleetproxy wheel from the collection's ``proxy/`` sources, then, for every
target platform seen in the play (Python version, machine, glibc), a directory holding
that wheel plus binary wheels of every dependency, fetched with ``pip download
--only-binary=:all:`` for the target's Python and platform tags, and a
``requirements.txt`` pinning exactly that set.  Hosts install from it with
``pip install --no-index``: they need no package index.

``pip download --python-version`` picks wheels for the target's Python but evaluates
environment markers (``python_version < "3.11"``) for the controller's own Python, so a
3.11 controller would leave out ``async-timeout`` that aiohttp needs on 3.10.  This
script therefore walks the dependency graph itself with the target's marker
environment and downloads whatever is missing until the set is closed.

Everything is cached under ``--cache``: the wheel by a digest of the sources (so an edit
without a version bump still gives a new wheel), each wheelhouse by digest and target.
Directories are built under temporary names and renamed into place, so an interrupted
or concurrent run never leaves a half-filled wheelhouse behind.

Prints one JSON document; ``changed`` is true when anything was built or downloaded.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - ansible-core depends on packaging
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore[no-redef]
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore[no-redef]

# Sources that go into the wheel; anything else in proxy/ (tests, benchmarks) does not.
SOURCE_IGNORE = shutil.ignore_patterns(
    '__pycache__', '*.pyc', '*.pyo', '*.egg-info', 'build', 'dist', 'tests', 'bench', '.*')
# Fixed zip timestamps: the same sources always give the same wheel bytes.
SOURCE_DATE_EPOCH = '315532800'
# Legacy manylinux aliases: name -> (glibc minor, machines).
LEGACY_MANYLINUX = {
    'manylinux2014': (17, ('x86_64', 'i686', 'aarch64', 'armv7l', 'ppc64', 'ppc64le', 's390x')),
    'manylinux2010': (12, ('x86_64', 'i686')),
    'manylinux1': (5, ('x86_64', 'i686')),
}
KEEP_SOURCE_BUILDS = 3
MAX_ROUNDS = 10


class WheelhouseError(Exception):
    """A failure with a message meant for the operator."""


def source_digest(source):
    """A digest of every file that goes into the wheel, names included."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(source):
        rel_root = os.path.relpath(root, source)
        ignored = SOURCE_IGNORE(root, dirs + files)
        dirs[:] = sorted(d for d in dirs if d not in ignored)
        for name in sorted(f for f in files if f not in ignored):
            rel = os.path.normpath(os.path.join(rel_root, name))
            digest.update(rel.encode() + b'\0')
            with open(os.path.join(root, name), 'rb') as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
    return digest.hexdigest()[:16]


def sha256_file(path):
    """The hex sha256 of a file."""
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def run_pip(python, args):
    """Run pip on the controller; raise with pip's own output on failure."""
    cmd = [python, '-m', 'pip', '--disable-pip-version-check', '--no-input'] + args
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise WheelhouseError('%s failed (rc=%d):\n%s%s' % (' '.join(cmd), proc.returncode, proc.stdout[-4000:], proc.stderr[-4000:]))


def publish(tmp_dir, final_dir):
    """Rename a finished directory into place; if another run won the race, keep theirs."""
    try:
        os.rename(tmp_dir, final_dir)
    except OSError:
        if not os.path.isdir(final_dir):
            raise
        shutil.rmtree(tmp_dir, ignore_errors=True)


def build_wheel(python, source, cache, pip_args):
    """The fleetproxy wheel for these sources: (path, changed)."""
    build_dir = os.path.join(cache, 'src-' + source_digest(source))
    dist = os.path.join(build_dir, 'dist')
    changed = False
    if not os.path.isdir(dist):
        os.makedirs(build_dir, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix='.build-', dir=build_dir)
        try:
            src_copy = os.path.join(tmp, 'src')
            # Build from a copy: the collection may be installed read-only, and pip's
            # in-tree build would leave build/ and *.egg-info behind in it.
            shutil.copytree(source, src_copy, ignore=SOURCE_IGNORE)
            os.environ['SOURCE_DATE_EPOCH'] = SOURCE_DATE_EPOCH
            run_pip(python, ['wheel', '--no-deps', '--wheel-dir', os.path.join(tmp, 'dist')] + pip_args + [src_copy])
            publish(os.path.join(tmp, 'dist'), dist)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        changed = True
    wheels = [f for f in os.listdir(dist) if f.endswith('.whl')]
    if len(wheels) != 1:
        raise WheelhouseError('expected one wheel in %s, found %s' % (dist, wheels))
    os.utime(build_dir)  # most recently used, for pruning
    return os.path.join(dist, wheels[0]), changed


def prune_builds(cache, keep):
    """Remove all but the ``keep`` most recently used source builds."""
    builds = [os.path.join(cache, d) for d in os.listdir(cache) if d.startswith('src-')]
    builds.sort(key=os.path.getmtime, reverse=True)
    for old in builds[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def platform_tags(machine, glibc):
    """Every manylinux tag a host with this machine and glibc accepts, newest first."""
    match = re.match(r'^(\d+)\.(\d+)', glibc)
    if not match or match.group(1) != '2':
        raise WheelhouseError('unsupported glibc version %r' % glibc)
    minor = int(match.group(2))
    tags = ['manylinux_2_%d_%s' % (m, machine) for m in range(minor, 4, -1)]
    for alias, (alias_minor, machines) in LEGACY_MANYLINUX.items():
        if machine in machines and alias_minor <= minor:
            tags.append('%s_%s' % (alias, machine))
    return tags


def marker_environment(target):
    """The PEP 508 marker environment of a target host."""
    full = target['python']
    return {
        'implementation_name': 'cpython',
        'implementation_version': full,
        'os_name': 'posix',
        'platform_machine': target['machine'],
        'platform_python_implementation': 'CPython',
        'platform_release': '',
        'platform_system': 'Linux',
        'platform_version': '',
        'python_full_version': full,
        'python_version': '.'.join(full.split('.')[:2]),
        'sys_platform': 'linux',
        'extra': '',
    }


def read_wheel(path):
    """(canonical name, Version, [Requirement]) from a wheel's METADATA."""
    with zipfile.ZipFile(path) as archive:
        names = [n for n in archive.namelist() if n.count('/') == 1 and n.endswith('.dist-info/METADATA')]
        if len(names) != 1:
            raise WheelhouseError('%s: cannot find its METADATA' % path)
        meta = email.parser.Parser().parsestr(archive.read(names[0]).decode('utf-8'), headersonly=True)
    requires = [Requirement(r) for r in meta.get_all('Requires-Dist') or []]
    return canonicalize_name(meta['Name']), Version(meta['Version']), requires


def scan(directory):
    """{canonical name: [(Version, filename, requires)]} for every wheel in a directory."""
    found = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith('.whl'):
            dist, version, requires = read_wheel(os.path.join(directory, name))
            found.setdefault(dist, []).append((version, name, requires))
    for versions in found.values():
        versions.sort(key=lambda item: item[0], reverse=True)
    return found


def applies(req, env, extras):
    """Whether a requirement applies on the target with these extras requested."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate(dict(env, extra=extra)) for extra in ('',) + tuple(extras))


def closure(found, roots, env):
    """Walk the requirements from ``roots`` with the target's markers.

    Returns ({name: (Version, filename)} needed, [Requirement] missing).
    """
    needed = {}
    missing = []
    seen = set()
    queue = [(req, ()) for req in roots]
    while queue:
        req, parent_extras = queue.pop()
        if not applies(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        if name in needed:
            version, filename, requires = needed[name]
            if not req.specifier.contains(version, prereleases=True):
                missing.append(req)
                continue
        else:
            candidates = [c for c in found.get(name, ()) if req.specifier.contains(c[0], prereleases=True)]
            if not candidates:
                missing.append(req)
                continue
            version, filename, requires = needed[name] = candidates[0]
        key = (name, tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        queue.extend((sub, tuple(sorted(req.extras))) for sub in requires)
    return {name: value[:2] for name, value in needed.items()}, missing


def bare(req):
    """A requirement without its marker, as pip download takes it."""
    text = canonicalize_name(req.name)
    if req.extras:
        text += '[%s]' % ','.join(sorted(req.extras))
    return text + str(req.specifier)


def build_wheelhouse(python, wheel, build_dir, target, pip_args):
    """The wheelhouse for one target: (key, directory, changed)."""
    env = marker_environment(target)
    key = 'cp%s-%s-glibc%s' % (env['python_version'].replace('.', ''), target['machine'], target['glibc'])
    final = os.path.join(build_dir, key)
    if os.path.isfile(os.path.join(final, 'requirements.txt')):
        return key, final, False
    tmp = tempfile.mkdtemp(prefix='.%s-' % key, dir=build_dir)
    try:
        download = ['download', '--only-binary=:all:', '--dest', tmp,
                    '--implementation', 'cp', '--python-version', env['python_version']]
        for tag in platform_tags(target['machine'], target['glibc']):
            download += ['--platform', tag]
        download += pip_args
        _dist, version, _requires = read_wheel(wheel)
        roots = [Requirement('fleetproxy==%s' % version), Requirement('pip')]
        run_pip(python, download + [wheel, 'pip'])
        for _round in range(MAX_ROUNDS):
            needed, missing = closure(scan(tmp), roots, env)
            if not missing:
                break
            run_pip(python, download + sorted({bare(r) for r in missing}))
        else:
            raise WheelhouseError('%s: cannot complete the wheelhouse, still missing: %s'
                                  % (key, ', '.join(sorted({str(r) for r in missing}))))
        keep = {filename for _version, filename in needed.values()}
        for name in os.listdir(tmp):
            if name not in keep:
                os.unlink(os.path.join(tmp, name))
        with open(os.path.join(tmp, 'requirements.txt'), 'w', encoding='utf-8') as handle:
            handle.write('# fleetproxy %s for %s, pinned by the fleetproxy.fleet.proxy role\n' % (version, key))
            for name in sorted(needed):
                handle.write('%s==%s\n' % (name, needed[name][0]))
        write_tar(tmp)
        os.chmod(tmp, 0o755)
        publish(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return key, final, True


def write_tar(directory):
    """``wheelhouse.tar``: the wheels and requirements.txt (last) in one reproducible file.

    Hosts get one file to compare and copy instead of one per wheel; requirements.txt
    comes last so that its presence after unpacking means the unpacking finished.
    """
    names = sorted(n for n in os.listdir(directory) if n.endswith('.whl')) + ['requirements.txt']
    with tarfile.open(os.path.join(directory, 'wheelhouse.tar'), 'w', format=tarfile.PAX_FORMAT) as archive:
        for name in names:
            info = archive.gettarinfo(os.path.join(directory, name), arcname=name)
            info.mtime = int(SOURCE_DATE_EPOCH)
            info.uid = info.gid = 0
            info.uname = info.gname = 'root'
            info.mode = 0o644
            with open(os.path.join(directory, name), 'rb') as handle:
                archive.addfile(info, handle)


def main(argv=None):
    """Entry point: build everything the targets need and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
    parser.add_argument('--source', required=True, help="the collection's proxy/ directory")
    parser.add_argument('--cache', required=True, help='cache directory on the controller')
    parser.add_argument('--targets', required=True, help='JSON list of {python, machine, glibc} (python as X.Y.Z, glibc as 2.N)')
    parser.add_argument('--pip-arg', action='append', default=[], help='extra argument for pip (repeat)')
    args = parser.parse_args(argv)
    python = sys.executable
    try:
        targets = json.loads(args.targets)
        if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
            raise WheelhouseError('--targets must be a JSON list of objects')
        if not os.path.isfile(os.path.join(args.source, 'pyproject.toml')):
            raise WheelhouseError('%s is not the fleetproxy source directory (no pyproject.toml)' % args.source)
        cache = os.path.abspath(os.path.expanduser(args.cache))
        os.makedirs(cache, exist_ok=True)
        wheel, changed = build_wheel(python, args.source, cache, args.pip_arg)
        result = {'wheel': os.path.basename(wheel), 'wheel_sha256': sha256_file(wheel),
                  'version': str(read_wheel(wheel)[1]), 'targets': []}
        for target in targets:
            key, directory, built = build_wheelhouse(python, wheel, os.path.dirname(os.path.dirname(wheel)), target, args.pip_arg)
            changed = changed or built
            with open(os.path.join(directory, 'requirements.txt'), encoding='utf-8') as handle:
                pins = [line.strip() for line in handle if line.strip() and not line.startswith('#')]
            result['targets'].append({
                'target': target,
                'key': key,
                'dir': directory,
                'tar': os.path.join(directory, 'wheelhouse.tar'),
                'pip_wheel': next(f for f in os.listdir(directory) if f.startswith('pip-') and f.endswith('.whl')),
                'pins': pins,
            })
        prune_builds(cache, KEEP_SOURCE_BUILDS)
    except (WheelhouseError, InvalidVersion, OSError, ValueError, KeyError) as exc:
        print(json.dumps({'failed': True, 'msg': str(exc)}))
        return 1
    result['changed'] = changed
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
