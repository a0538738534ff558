"""The package as a user gets it: `make dist` builds the sdist and the wheel, and the wheel installed into a fresh
venv outside the checkout runs `hypercheckout up` from an empty directory, dashboard and buyer page included.

One build and one venv serve every test here (module scope): building and installing take about 15 s.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import re
import subprocess
import sys
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import hypercheckout
from tests.clusters import cluster_workdir, purchase, start_cluster, stop_cluster

ROOT = Path(__file__).resolve().parent.parent
# What the service reads at run time besides its code, as the repository has it.
RUN_TIME_FILES = [
    *(f"{folder}/{path.relative_to(ROOT / folder)}" for folder in ("templates", "static", "nginx")
      for path in sorted((ROOT / folder).rglob("*")) if path.is_file()),
    *(f"{folder}/{path.name}" for folder, pattern in (("lua", "*.lua"), ("migrations", "*.sql"))
      for path in sorted((ROOT / "hypercheckout" / folder).glob(pattern))),
]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would let the checkout's package or venv be used instead."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`make dist`'s two commands: the sdist, the wheel built from it, both checked by twine."""
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(out.iterdir())
    checked = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return out


@pytest.fixture(scope="module")
def installed(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv, outside the checkout, with only the wheel (and what it requires) installed: its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    [wheel] = dist.glob("*.whl")
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True, timeout=600, cwd=venv, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    return venv / "bin"


@pytest.fixture
def empty_dir() -> Iterator[Path]:
    with cluster_workdir() as workdir:
        empty = workdir / "empty"
        empty.mkdir(mode=0o755)
        yield empty


def test_the_sdist_and_the_wheel_carry_every_file_the_service_reads_at_run_time(dist: Path) -> None:
    version = hypercheckout.__version__
    [wheel] = dist.glob(f"hypercheckout-{version}-py3-none-any.whl")
    [sdist] = dist.glob(f"hypercheckout-{version}.tar.gz")
    assert sdist.stat().st_size > 0
    names = set(zipfile.ZipFile(wheel).namelist())
    assert len(RUN_TIME_FILES) > 20
    missing = [name for name in RUN_TIME_FILES if f"hypercheckout/{name}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    # The wheel was built from the sdist (python -m build), so the sdist carries them too.


def test_the_installed_command_names_its_version_and_runs_from_its_own_files(installed: Path,
                                                                              empty_dir: Path) -> None:
    shown = subprocess.run([str(installed / "hypercheckout"), "--version"], capture_output=True, text=True,
                           cwd=empty_dir, env=clean_env(), timeout=60)
    assert shown.returncode == 0 and shown.stdout.strip() == f"hypercheckout {hypercheckout.__version__}"
    where = subprocess.run([str(installed / "python"), "-c", "import hypercheckout; print(hypercheckout.__file__)"],
                           capture_output=True, text=True, cwd=empty_dir, env=clean_env(), timeout=60, check=True)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent)
    config = subprocess.run([str(installed / "hypercheckout"), "nginx-config", "--upstream", "127.0.0.1:8001"],
                            capture_output=True, text=True, cwd=empty_dir, env=clean_env(), timeout=60)
    assert config.returncode == 0, config.stderr
    assert "server 127.0.0.1:8001 " in config.stdout


def test_a_broken_install_names_the_missing_file(installed: Path, empty_dir: Path) -> None:
    """The defect this package's issue found: a file missing from the install was reported as Redis unreachable."""
    template = installed.parent / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages" / "hypercheckout" / "nginx" / "nginx.conf.template"
    kept = template.read_bytes()
    template.unlink()
    try:
        done = subprocess.run([str(installed / "hypercheckout"), "nginx-config", "--upstream", "127.0.0.1:8001"],
                              capture_output=True, text=True, cwd=empty_dir, env=clean_env(), timeout=60)
    finally:
        template.write_bytes(kept)
    assert done.returncode == 1
    assert done.stderr.startswith(f"hypercheckout: missing file: {template} (")
    assert "Redis" not in done.stderr and "Traceback" not in done.stderr


def fetch(opener: urllib.request.OpenerDirector, url: str, data: dict[str, str] | None = None) -> tuple[int, str]:
    body = urllib.parse.urlencode(data).encode() if data is not None else None
    with opener.open(urllib.request.Request(url, data=body), timeout=30) as response:
        return response.status, response.read().decode()


def static_files_load(opener: urllib.request.OpenerDirector, base: str, page: str) -> list[str]:
    """Every /static/ file the page names, fetched: the ones that did not answer 200 with a body."""
    urls = sorted(set(re.findall(r'"(/static/[^"]+)"', page)))
    assert urls, "the page names no static file"
    failed = []
    for path in urls:
        status, text = fetch(opener, base + path)
        if status != 200 or not text:
            failed.append(path)
    return failed


def test_the_installed_wheel_runs_the_whole_system_from_an_empty_directory(installed: Path, empty_dir: Path) -> None:
    data_dir = empty_dir / ".hypercheckout"  # `up`'s default, named so that the test's helpers find the cluster
    running = start_cluster(data_dir, replicas=2, command=[str(installed / "hypercheckout")], cwd=empty_dir,
                            PYTHONPATH="", HC_ADMIN_TOKEN="package-test")
    try:
        replicas = [p for p in running.processes() if "serve" in p.cmdline()]
        assert replicas and all(p.cmdline()[0].startswith(str(installed.parent)) for p in replicas)

        status, body = purchase(running.url, 7)
        assert status == 200, body
        shown = subprocess.run([str(installed / "hypercheckout"), "status", "--json", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, cwd=empty_dir, env=clean_env(), timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["orders"] == 1

        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        status, shop = fetch(opener, f"{running.url}/shop/1")
        assert status == 200 and '<h1 id="name">Product 1</h1>' in shop
        assert static_files_load(opener, running.url, shop) == []

        status, login = fetch(opener, f"{running.url}/admin/login")
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', login).group(1)
        status, dashboard = fetch(opener, f"{running.url}/admin/login", {"token": "package-test", "_xsrf": xsrf})
        assert status == 200 and '<main id="dashboard"' in dashboard
        assert static_files_load(opener, running.url, dashboard) == []
    finally:
        stop_cluster(running)
    assert running.process.returncode == 0, running.output.read_text()[-2000:]
