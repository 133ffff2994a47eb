"""One family of errors: every exception class the package defines or exports is an
AcestepError, and no module raises a bare builtin error."""
from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil
from pathlib import Path

import pytest

import acestep_ggml
from acestep_ggml import errors

PACKAGE = Path(acestep_ggml.__file__).parent
# Modules that run something when imported.
NOT_IMPORTED = {"__main__"}


def _modules():
    yield acestep_ggml
    yield acestep_ggml._core
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="acestep_ggml."):
        if info.name.rsplit(".", 1)[-1] not in NOT_IMPORTED:
            yield importlib.import_module(info.name)


def _exception_classes():
    for module in _modules():
        for name, value in vars(module).items():
            if isinstance(value, type) and issubclass(value, BaseException) \
                    and value.__module__.startswith("acestep_ggml"):
                yield f"{module.__name__}.{name}", value


def test_every_exported_name_that_is_an_exception_is_an_acestep_error():
    exported = {name: getattr(acestep_ggml, name) for name in acestep_ggml.__all__}
    classes = {n: v for n, v in exported.items() if isinstance(v, type) and issubclass(v, BaseException)}
    assert set(classes) >= set(errors.__all__)
    for name, cls in classes.items():
        assert issubclass(cls, acestep_ggml.AcestepError), name


def test_every_exception_class_of_the_package_is_an_acestep_error():
    found = dict(_exception_classes())
    assert "acestep_ggml.errors.DeviceError" in found
    for name, cls in found.items():
        assert issubclass(cls, acestep_ggml.AcestepError), name


@pytest.mark.parametrize("name", errors.__all__)
def test_the_core_raises_the_package_classes(name):
    """The native core's errors are the Python classes themselves, not copies."""
    if hasattr(acestep_ggml._core, name):
        assert getattr(acestep_ggml._core, name) is getattr(errors, name)


@pytest.mark.parametrize("name, base", [("ModelFileError", ValueError), ("InputError", ValueError),
                                        ("DeviceError", RuntimeError), ("ExchangeError", ValueError),
                                        ("ModelsNotFound", FileNotFoundError), ("ConstraintError", ValueError)])
def test_each_error_keeps_its_builtin_base(name, base):
    """An ``except ValueError`` written before the family existed still catches these."""
    assert issubclass(getattr(errors, name), base)


# Raised on purpose and not errors: the exit of `python -m`, and Ctrl-C passed on by the CLI.
ALLOWED = {"SystemExit", "KeyboardInterrupt"}


def _raised_builtins(path: Path):
    """(line, name) of each ``raise X(...)`` / ``raise X`` of a builtin exception in a file."""
    builtin_errors = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(exc, ast.Name) and exc.id in builtin_errors and exc.id not in ALLOWED:
                yield node.lineno, exc.id


def test_no_module_raises_a_bare_builtin_error():
    bare = [f"{p.relative_to(PACKAGE)}:{line}: {name}" for p in sorted(PACKAGE.rglob("*.py"))
            for line, name in _raised_builtins(p)]
    assert not bare, "raise a class of acestep_ggml.errors instead:\n" + "\n".join(bare)
