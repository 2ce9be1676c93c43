"""The package's surface: lazy top-level names, and a command line whose help needs no torch."""

from __future__ import annotations

import subprocess
import sys

import mtgrad


def _fresh_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_help_for_every_command_imports_no_torch():
    code = (
        "import sys, contextlib, io\n"
        "from mtgrad.cli import main\n"
        "for command in ([], ['toy'], ['train'], ['compare'], ['rl']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([*command, '--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "print('torch' in sys.modules)\n"
    )
    assert _fresh_python(code) == "False"


def test_functions_named_like_their_modules_stay_functions_whatever_is_imported_first():
    # Importing a submodule first binds the package attribute to the module; the package keeps
    # the function (an eager __init__ did; the lazy one must too).
    code = (
        "import mtgrad.optim, mtgrad.aggregate, mtgrad.backward, mtgrad\n"
        "from mtgrad import *\n"
        "print(callable(mtgrad.backward), callable(mtgrad.aggregate), callable(backward), callable(aggregate))\n"
    )
    assert _fresh_python(code) == "True True True True"


def test_every_public_name_resolves_and_unknown_names_raise():
    # __all__ is written out so that it needs no torch; it must stay the whole public surface.
    lazy = ["aggregate", "accumulate_task_gradients", "apply_task_gradients", "TaskGradients", "backward",
            "BackwardResult", "GramianEngine", "grouped_backward", "grouped_task_gradients", "MTLOptimizer", "MtgradWarning"]
    assert mtgrad.__all__ == [*lazy, "methods", "solvers", "diagnostics", *mtgrad.methods.__all__]
    for name in mtgrad.__all__:
        assert getattr(mtgrad, name) is not None, name
    assert mtgrad.PCGrad is mtgrad.methods.PCGrad and mtgrad.distributed.replicas is not None
    try:
        mtgrad.no_such_name
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("an unknown name resolved")


def test_the_cli_settings_are_the_experiments_own():
    from mtgrad.bench import report, settings, toy
    from mtgrad.bench.benchmarks import BENCHMARKS

    assert sorted(settings.BENCHMARK_NAMES) == sorted(BENCHMARKS)
    assert toy.CAGRAD_METHODS is settings.CAGRAD_METHODS and toy.DEFAULT_STEPS == settings.DEFAULT_STEPS
    assert report.DEFAULT_METHODS is settings.COMPARE_METHODS and report.DEFAULT_SEEDS is settings.COMPARE_SEEDS


def test_patching_a_function_named_like_its_module_is_undone(monkeypatch):
    from unittest import mock

    original = mtgrad.aggregate
    with mock.patch("mtgrad.aggregate", lambda *a: "patched"):
        assert mtgrad.aggregate() == "patched"
    assert mtgrad.aggregate is original
    monkeypatch.setattr(mtgrad, "backward", "patched")
    assert mtgrad.backward == "patched"
    monkeypatch.undo()
    assert callable(mtgrad.backward)
    assert _fresh_python("import mtgrad, sys; hasattr(mtgrad, '__wrapped__'); print('torch' in sys.modules)") == "False"
