"""The layering of the code (README "Architecture", STYLE §1 and §13), read from the imports.

Layers only import downward. From the top:

    cli/, loadtest/, client/        commands and clients
    node.py                         the composition root: builds and starts a node
    net/  srm/  cluster/            adapters: sockets, the SRM's timers and links
    features/                       handler modules registered on the router
    messaging.py presence_service.py activation.py xmpp/backup.py admission.py
                                    the services features and adapters share (messages, presence,
                                    activation of inactive sessions, the backup protocol's names,
                                    login admission): below both, so neither reaches the other
    router.py context.py store.py services.py sessions.py config.py auth.py metrics.py ...
    db/                             the availability database (SQLAlchemy)
    xmpp/  link/  assignment.py     sans-IO protocol cores and pure rules

An import inside `if TYPE_CHECKING:` is a type annotation, not a dependency, and is not
counted. Modules loaded by name (`FEATURE_MODULES`, the CLI's sub-commands) are loaded
by node.py and cli/ only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "presence_ha"
SOURCES = ("server", "client", "db", "migrations", "loadtest")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST) -> list[str]:
    """Absolute names imported at run time (outside `if TYPE_CHECKING:` blocks)."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _modules() -> dict[str, list[str]]:
    """`server.net.c2s` -> the project modules it imports (without the `presence_ha.` prefix)."""
    result: dict[str, list[str]] = {}
    for folder in SOURCES:
        for path in (ROOT / folder).rglob("*.py"):
            names = _runtime_imports(ast.parse(path.read_text(), str(path)))
            ours = [n.removeprefix(PACKAGE + ".") for n in names if n.startswith(PACKAGE + ".")]
            result[_module_name(path)] = ours
    return result


MODULES = _modules()


def _importers(of: str, by: str) -> list[str]:
    """Modules under `by` that import something under `of`."""
    return sorted(f"{mod} -> {name}" for mod, names in MODULES.items() if mod == by or mod.startswith(by + ".")
                  for name in names if name == of or name.startswith(of + "."))


@pytest.mark.parametrize("lower", ["server.features", "server.node", "server.cli"])
@pytest.mark.parametrize("upper", ["server.net", "server.srm", "server.cluster"])
def test_adapters_do_not_reach_features_or_the_root(upper: str, lower: str) -> None:
    assert _importers(lower, upper) == []


@pytest.mark.parametrize("upper", ["server.net", "server.srm", "server.cluster", "server.node", "server.cli"])
def test_features_import_no_adapter(upper: str) -> None:
    assert _importers(upper, "server.features") == []


@pytest.mark.parametrize("mod", sorted(m for m in MODULES if m.startswith("server.") and m.count(".") >= 1
                                       and m.split(".")[1] not in ("features", "node", "cli")))
def test_below_features_nothing_imports_a_feature(mod: str) -> None:
    assert _importers("server.features", mod) == []


@pytest.mark.parametrize("core", ["server.xmpp", "server.link", "db"])
@pytest.mark.parametrize("upper", ["server.net", "server.srm", "server.cluster", "server.features", "server.node",
                                   "server.router", "server.store", "server.services"])
def test_cores_and_the_database_import_nothing_above_them(core: str, upper: str) -> None:
    assert _importers(upper, core) == []


SERVICES = ["server.messaging", "server.presence_service", "server.activation", "server.context",
            "server.xmpp.backup", "server.admission"]


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("upper", ["server.features", "server.net", "server.srm", "server.cluster", "server.node"])
def test_the_shared_services_import_nothing_above_them(service: str, upper: str) -> None:
    assert _importers(upper, service) == []


def test_only_the_composition_root_loads_features() -> None:
    outside = {line.split(" -> ")[0] for line in _importers("server.features", "server")
               if not line.startswith("server.features")}
    assert outside == {"server.node"}


CORES = ("server.xmpp", "server.link", "server.assignment")  # pure, below the database layer


def test_the_database_layer_imports_only_the_pure_cores() -> None:
    above = [line for line in _importers("server", "db") if not line.split(" -> ")[1].startswith(CORES)]
    assert above == [] and _importers("client", "db") == []


@pytest.mark.parametrize("core", CORES)
def test_the_pure_cores_import_only_each_other(core: str) -> None:
    above = [line for line in _importers("server", core) if not line.split(" -> ")[1].startswith(CORES)]
    assert above == [] and _importers("db", core) == []


PURE = ["server.xmpp.stream", "server.srm.machine", "server.srm.table", "server.link.protocol", "client.policy"]
IO = ("asyncio", "socket", "sqlalchemy", "prometheus_client", "time", "uvloop")


@pytest.mark.parametrize("core", PURE)
def test_pure_cores_do_no_io(core: str) -> None:
    path = ROOT / (core.replace(".", "/") + ".py")
    names = _runtime_imports(ast.parse(path.read_text()))
    assert sorted(n for n in names if n.split(".")[0] in IO) == []


def test_the_rules_see_the_code() -> None:
    """The reader must find imports at all (a change of namespace would silently empty it)."""
    assert "server.router" in MODULES["server.features.ping"] or any(
        n.startswith("server.") for n in MODULES["server.features.ping"])
    assert len(MODULES) > 100
