"""Which package may import which: read from the source (ast), lazy imports inside functions included.

- `crypto_platform/lib/` is the domain core: no orchestration, web, GraphQL, gRPC or Kafka framework;
- `serving/core/` is shared by every face, so it imports none of them and no framework either;
- `serving/stream/` (the Kafka scorer) reads the served-model core, never the REST package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FRAMEWORKS = ("dagster", "litestar", "aiokafka", "strawberry", "grpc", "grpc_health", "grpc_reflection")
FACES = ("serving.api", "serving.graphql", "serving.grpc", "serving.stream")

# (folder, forbidden module prefixes, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("crypto_platform/lib", FRAMEWORKS, "lib is the framework-free domain core"),
    ("serving/core", (*FRAMEWORKS, *FACES), "the served-model core is shared by every face"),
    ("serving/stream", ("serving.api",), "the scorer imports serving.core, not the REST package"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `source` (the text of `module`) imports, relative imports resolved."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            found.add(prefix)
            # `from serving import api` imports serving.api: count the names as submodules too.
            found.update(f"{prefix}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def violations(modules: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f"{f}.") for f in forbidden))


@pytest.mark.parametrize(("folder", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_no_forbidden_imports(folder, forbidden, why):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"{folder} has no Python files: the rule would check nothing"
    broken = {}
    for path in files:
        found = violations(
            imported_modules(path.read_text(), _module_name(path), path.name == "__init__.py"), forbidden
        )
        if found:
            broken[str(path.relative_to(ROOT))] = found
    assert not broken, f"{why}: {broken}"


def test_the_walk_sees_every_kind_of_import():
    source = """
import dagster as dg
from litestar import get
def lazy():
    from aiokafka import AIOKafkaConsumer
    import grpc.aio
from serving import api
from ..api.scoring import FeatureCache
from serving.core.model_store import ModelStore
"""
    found = imported_modules(source, "serving.stream.scorer")
    assert {m.split(".")[0] for m in violations(found, FRAMEWORKS)} == {
        "aiokafka",
        "dagster",
        "grpc",
        "litestar",
    }
    rest = violations(found, ("serving.api",))
    assert "serving.api" in rest and "serving.api.scoring" in rest  # relative import resolved
    assert not any(m.startswith("serving.core") for m in rest)
    assert not violations({"grpcio_tools", "dagsterx", "serving.apis"}, (*FRAMEWORKS, "serving.api"))
