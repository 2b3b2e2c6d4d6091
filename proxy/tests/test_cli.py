"""The ``fleetproxy`` command: ``check`` exit codes and messages, ``run`` refusing bad
input, every file in proxy/examples/ checked and run, and the demo."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from proxytest.backend import Backend
from proxytest.client import get
from proxytest.proxy import free_port

# vrrp*.yml are `fleetproxy vrrp` files, checked in tests/vrrp/test_vrrp_config.py.
EXAMPLES = sorted(p for p in (Path(__file__).resolve().parent.parent / "examples").glob("*.yml")
                  if not p.name.startswith("vrrp"))


def fleetproxy(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fleetproxy", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def write(tmp_path: Path, doc: dict[str, Any] | str, name: str = "c.yml") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def test_check_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, {"backends": [{"name": "b", "servers": [{"name": "s", "address": "127.0.0.1:1"}]}]})
    r = fleetproxy("check", "-c", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{path}: configuration is valid"
    assert r.stderr == ""
    r = fleetproxy("check", "-q", "-c", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_check_prints_every_error_with_its_key_path(tmp_path: Path) -> None:
    path = write(tmp_path, {
        "frontends": [{"name": "fe", "bind": ["*:80"], "default_backend": "htp_back"}],
        "backends": [{"name": "http_back", "servers": [
            {"name": "a", "address": "127.0.0.1:80"}, {"name": "b", "address": "127.0.0.1:99999"}]}],
    })
    r = fleetproxy("check", "-c", str(path))
    assert r.returncode == 1
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert f"{path}: backends[0].servers[1].address: port 99999 out of range (1-65535)" in lines
    assert f"{path}: frontends[0].default_backend: no backend named 'htp_back' (did you mean 'http_back'?)" in lines
    assert lines[-1] == f"{path}: configuration is invalid (2 error(s))"


def test_check_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    r = fleetproxy("check", "-c", str(tmp_path / "nope.yml"))
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr
    path = write(tmp_path, "global: {maxconn: [\n")
    r = fleetproxy("check", "-c", str(path))
    assert r.returncode == 1 and "invalid YAML" in r.stderr and "line 2" in r.stderr


def test_check_usage_errors() -> None:
    r = fleetproxy("check")
    assert r.returncode == 2 and "-c/--config" in r.stderr
    r = fleetproxy("--version")
    assert r.returncode == 0 and re.match(r"fleetproxy \d+\.\d+", r.stdout)


def test_console_script_is_installed(tmp_path: Path) -> None:
    exe = shutil.which("fleetproxy", path=str(Path(sys.executable).parent))
    assert exe is not None
    path = write(tmp_path, {})
    r = subprocess.run([exe, "check", "-c", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_run_refuses_an_invalid_config_and_binds_nothing(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, {"frontends": [{"name": "fe", "bind": [f"127.0.0.1:{port}"], "default_backend": "x"}]})
    r = fleetproxy("run", "-c", str(path))
    assert r.returncode == 1
    assert f"{path}: frontends[0].default_backend: no backend named 'x'" in r.stderr
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_run_reports_a_bind_that_fails(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write(tmp_path, {"frontends": [{"name": "fe", "bind": [f"127.0.0.1:{port}"]}]})
        r = fleetproxy("run", "-c", str(path))
    assert r.returncode == 1
    assert "cannot start" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------
# Every example: valid, and it runs (binds and servers moved to free ports)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_passes_check(example: Path) -> None:
    r = fleetproxy("check", "-c", str(example))
    assert r.returncode == 0, r.stderr


def test_examples_directory_holds_the_required_files() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"quickstart.yml", "haproxy-seed.yml", "contract.yml"} <= names


def _only_loopback(doc: dict[str, Any]) -> None:
    for fe in doc.get("frontends", []):
        for b in fe["bind"]:
            host = b.rpartition(":")[0].strip("[]")
            assert host in ("*", "", "127.0.0.1", "::", "::1"), b
    for be in doc.get("backends", []):
        for s in be.get("servers", []):
            assert s["address"].startswith(("127.", "[::1]")), s["address"]


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs(example: Path, proxy: Any, backend: Any) -> None:
    doc = yaml.safe_load(example.read_text())
    _only_loopback(doc)
    by_address: dict[str, Backend] = {}
    for be in doc.get("backends", []):
        for s in be.get("servers", []):
            if s["address"] not in by_address:
                by_address[s["address"]] = backend(s["name"])
            s["address"] = by_address[s["address"]].address
    for fe in doc.get("frontends", []):
        fe["bind"] = [f"127.0.0.1:{free_port()}" for _ in fe["bind"]]
    p = proxy(doc)
    backends = {be["name"]: be for be in doc["backends"]}
    for fe in doc["frontends"]:
        if not fe.get("default_backend"):
            continue
        be = backends[fe["default_backend"]]
        primaries = [s["name"] for s in be["servers"] if not s.get("backup")]
        # Servers with `check` start DOWN until their first check passes (spread over
        # at most 2 s): allow a bounded wait.
        deadline = time.monotonic() + 6
        while True:
            r = get(p.port(fe["name"]), "/example")
            if r.status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status == 200, r
        assert r.header("X-Served-By") in primaries
    p.assert_clean_exit()


def test_demo_shows_traffic_balanced_over_its_backends(tmp_path: Path) -> None:
    """`make demo` runs `fleetproxy demo` on quickstart.yml; here on free ports."""
    doc = yaml.safe_load((Path(__file__).resolve().parent.parent / "examples" / "quickstart.yml").read_text())
    ports = {}
    for be in doc["backends"]:
        for s in be["servers"]:
            ports.setdefault(s["address"], free_port())
            s["address"] = f"127.0.0.1:{ports[s['address']]}"
    doc["frontends"][0]["bind"] = [f"127.0.0.1:{free_port()}"]
    doc["global"]["log"] = {"access": "none"}
    path = write(tmp_path, doc)
    r = fleetproxy("demo", "-c", str(path), "-n", "6", "--no-wait", timeout=60)
    assert r.returncode == 0, r.stderr
    counts = dict(re.findall(r"^\s+(\w+)\s+(\d+)\s+#+$", r.stdout, re.M))
    assert counts == {"app1": "4", "app2": "2"}, r.stdout
