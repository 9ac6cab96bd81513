"""Python stubs of `protos/crypto.proto`, generated with grpcio-tools when missing or stale.

Nothing generated is committed: the first import of `serving.grpc.server` (or `load()`) runs protoc
into `serving/grpc/generated/` (git-ignored), so a fresh checkout, `pip install -e .` and CI need no
manual step. The directory carries a stamp, the SHA-256 of the .proto plus the grpcio-tools and
protobuf versions (generated code is tied to both); any change regenerates. Generation happens under
an exclusive file lock and files are moved in with `os.replace`, stamp last, so concurrent processes
(test workers, a server starting beside a client) never import half-written stubs. Where the package
directory is read-only (a site-packages install), stubs go to CRYPTO_GRPC_STUBS_DIR or the user cache.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import metadata, resources
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).resolve().parent / "protos" / "crypto.proto"
DEFAULT_DIR = Path(__file__).resolve().parent / "generated"
PACKAGE = "serving.grpc.generated"
STAMP = "PROTO_STAMP"
_thread_lock = threading.Lock()


class StubGenerationError(RuntimeError):
    """protoc rejected the .proto (its messages are in the exception)."""


def fingerprint(proto: Path = PROTO) -> str:
    digest = hashlib.sha256(proto.read_bytes())
    for dist in ("grpcio-tools", "protobuf"):
        digest.update(f"\n{dist}=={metadata.version(dist)}".encode())
    return digest.hexdigest()


def default_dir() -> Path:
    configured = os.environ.get("CRYPTO_GRPC_STUBS_DIR", "").strip()
    if configured:
        return Path(configured)
    if os.access(DEFAULT_DIR if DEFAULT_DIR.exists() else DEFAULT_DIR.parent, os.W_OK):
        return DEFAULT_DIR
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "crypto-platform" / "grpc-stubs"


def _module_names(proto: Path) -> tuple[str, str]:
    stem = proto.stem.replace("-", "_").replace(".", "_")
    return f"{stem}_pb2", f"{stem}_pb2_grpc"


def is_fresh(out_dir: Path, proto: Path = PROTO) -> bool:
    stamp = out_dir / STAMP
    pb2, pb2_grpc = _module_names(proto)
    return (
        stamp.is_file()
        and stamp.read_text().strip() == fingerprint(proto)
        and all((out_dir / f"{name}.py").is_file() for name in (pb2, pb2_grpc))
    )


def _protoc(proto: Path, out: Path) -> None:
    # A child process, not grpc_tools.protoc.main() in this one: protoc's C++ protobuf crashes
    # (SIGSEGV) in a process that has already loaded another copy of it, TensorFlow's for one.
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto.parent}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(proto),
    ]
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise StubGenerationError(f"protoc failed on {proto}:\n{done.stderr.strip()}")


def ensure(out_dir: Path | None = None, proto: Path = PROTO) -> Path:
    """`out_dir` holding stubs of `proto` that match its current content; generated if needed."""
    out_dir = Path(out_dir or default_dir())
    if is_fresh(out_dir, proto):
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    # flock excludes other processes; the thread lock other threads of this one (one lock file open).
    with _thread_lock, open(out_dir / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_fresh(out_dir, proto):  # another process generated them while we waited
                return out_dir
            _generate_into(out_dir, proto)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return out_dir


def _generate_into(out_dir: Path, proto: Path) -> None:
    pb2, pb2_grpc = _module_names(proto)
    work = Path(tempfile.mkdtemp(prefix=".generating-", dir=out_dir))
    try:
        _protoc(proto, work)
        # protoc writes `import crypto_pb2` (a top-level module); the stubs live in a package.
        grpc_module = work / f"{pb2_grpc}.py"
        text = grpc_module.read_text()
        text = re.sub(rf"^import {pb2} as ", f"from . import {pb2} as ", text, flags=re.MULTILINE)
        grpc_module.write_text(text)
        (work / "__init__.py").write_text(
            f'"""Generated from {proto.name} by serving/grpc/stubs.py; do not edit or commit."""\n'
        )
        for name in ("__init__.py", f"{pb2}.py", f"{pb2}.pyi", f"{pb2_grpc}.py"):
            os.replace(work / name, out_dir / name)
        (work / STAMP).write_text(fingerprint(proto) + "\n")
        os.replace(work / STAMP, out_dir / STAMP)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(
    out_dir: Path | None = None, package: str = PACKAGE, proto: Path = PROTO
) -> tuple[ModuleType, ModuleType]:
    """(pb2, pb2_grpc) modules of `proto`, imported as `package`.<stem>_pb2[_grpc] from `out_dir`."""
    out_dir = ensure(out_dir, proto).resolve()
    pb2, pb2_grpc = _module_names(proto)
    existing = sys.modules.get(package)
    if existing is None or list(getattr(existing, "__path__", [])) != [str(out_dir)]:
        spec = importlib.util.spec_from_file_location(
            package, out_dir / "__init__.py", submodule_search_locations=[str(out_dir)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[package] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{package}.{pb2}"), importlib.import_module(f"{package}.{pb2_grpc}")
