"""The console's ES modules without a browser: every name one imports is one the other
exports, so a view added or renamed cannot break the console's loading unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "app" / "console" / "static"
IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"([^"]+)";', re.MULTILINE)
EXPORT = re.compile(r"^export\s+(?:async\s+)?(?:function|const|let|class)\s+(\w+)", re.MULTILINE)
MODULES = sorted(STATIC.rglob("*.js"))


def exports(path: Path) -> set[str]:
    return set(EXPORT.findall(path.read_text()))


@pytest.mark.parametrize("module", MODULES, ids=lambda p: str(p.relative_to(STATIC)))
def test_every_imported_name_is_exported(module: Path) -> None:
    for names, target in IMPORT.findall(module.read_text()):
        source = (module.parent / target).resolve()
        assert source.is_file(), f"{module.name} imports {target}, which does not exist"
        wanted = {n.strip().split(" as ")[0] for n in names.split(",") if n.strip()}
        missing = wanted - exports(source)
        assert not missing, f"{module.name} imports {sorted(missing)} that {target} lacks"


def test_the_drift_queue_is_in_the_navigation_and_routed() -> None:
    assert 'href="#/queues/drift"' in (STATIC / "index.html").read_text()
    app = (STATIC / "app.js").read_text()
    assert 'parts[1] === "drift"' in app and "renderDrift" in app
    drift = (STATIC / "views" / "drift.js").read_text()
    assert '"/v1/jobs", { drift: "open"' in drift and "/drift/clear" in drift
