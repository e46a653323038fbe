"""Features are the top layer: only the composition root imports them, and they import
nothing of the connections, the SRM or the cluster (STYLE §13)."""

from __future__ import annotations

import ast
from pathlib import Path

SERVER = Path(__file__).resolve().parents[3] / "server"
LOWER = ("presence_ha.server.net", "presence_ha.server.srm", "presence_ha.server.cluster")
FEATURES = "presence_ha.server.features"


def imported(path: Path) -> set[str]:
    """Every module `path` imports, `from x import y` counted as x and x.y."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_only_the_composition_root_imports_features():
    importers = sorted(
        str(path.relative_to(SERVER)) for path in SERVER.rglob("*.py")
        if "features" not in path.relative_to(SERVER).parts
        and any(under(name, FEATURES) for name in imported(path))
    )
    assert importers == ["node.py"]


def test_features_never_import_the_connections_the_srm_or_the_cluster():
    for path in (SERVER / "features").glob("*.py"):
        wrong = [name for name in imported(path) if any(under(name, package) for package in LOWER)]
        assert not wrong, f"{path.name} imports {wrong}"


def test_the_services_features_use_do_not_import_features():
    for name in ("messaging.py", "presence_service.py", "activation.py", "context.py", "xmpp/backup.py"):
        wrong = [n for n in imported(SERVER / name) if under(n, FEATURES) or any(under(n, p) for p in LOWER)]
        assert not wrong, f"{name} imports {wrong}"
