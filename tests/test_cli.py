"""The ``mtgrad`` command line (mtgrad.cli) and ``python -m mtgrad``."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtgrad.bench import toy
from mtgrad.cli import main

REQUIRED = ["method", "start_x", "start_y", "end_x", "end_y", "loss_1", "loss_2", "loss_avg"]
HAS_MPL = importlib.util.find_spec("matplotlib") is not None


def _read(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_toy_writes_csvs_and_figures(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--steps", "200", "--out", str(out)]) == 0

    for name, methods, starts in [
        ("cagrad", toy.CAGRAD_METHODS, toy.CAGRAD_STARTS),
        ("pcgrad", toy.PCGRAD_METHODS, toy.PCGRAD_STARTS),
    ]:
        header, rows = _read(out / f"toy_{name}.csv")
        assert header[: len(REQUIRED)] == REQUIRED
        assert len(rows) == len(methods) * len(starts)
        pairs = [(r["method"], float(r["start_x"]), float(r["start_y"])) for r in rows]
        assert pairs == [(m, float(x), float(y)) for m in methods for (x, y) in starts]
        assert all(int(r["steps"]) == 200 for r in rows)
        for r in rows:
            l1, l2, avg = float(r["loss_1"]), float(r["loss_2"]), float(r["loss_avg"])
            assert avg == pytest.approx(0.5 * (l1 + l2))
        if HAS_MPL:
            png = out / f"toy_{name}.png"
            assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    printed = capsys.readouterr().out
    assert "cagrad:c=0.5" in printed and "at L0 min" in printed
    assert "PCGrad toy" in printed


def test_toy_methods_with_commas_inside_specs(tmp_path):
    out = tmp_path / "o"
    argv = [
        "toy",
        "--problem", "cagrad",
        "--steps", "30",
        "--methods", "gd,cagrad:c=0.5,rescale=2;pcgrad:reduction=mean",
        "--starts=-8.5,-5;9,9",
        "--out", str(out),
        "--no-plots",
        "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    _, rows = _read(out / "toy_cagrad.csv")
    assert [r["method"] for r in rows] == [
        "gd", "gd",
        "cagrad:c=0.5,rescale=2", "cagrad:c=0.5,rescale=2",
        "pcgrad:reduction=mean", "pcgrad:reduction=mean",
    ]  # fmt: skip
    assert [(float(r["start_x"]), float(r["start_y"])) for r in rows[:2]] == [(-8.5, -5), (9, 9)]
    assert not (out / "toy_pcgrad.csv").exists()
    assert not (out / "toy_cagrad.png").exists()


def test_toy_without_matplotlib_still_writes_csvs(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    out = tmp_path / "nompl"
    assert main(["toy", "--problem", "pcgrad", "--steps", "20", "--out", str(out)]) == 0
    assert (out / "toy_pcgrad.csv").exists()
    assert not (out / "toy_pcgrad.png").exists()
    assert "pip install 'mtgrad[plots]'" in capsys.readouterr().out


def test_bad_arguments_exit_with_usage_error(tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["toy", "--steps", "-3", "--out", str(tmp_path)])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["toy", "--starts", "1,2,3", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main([])  # a command is required
    for bad in ("nope", "cagrad:cc=1", "graddrop"):  # unknown, bad option, not a Gramian weighting
        with pytest.raises(SystemExit) as exc:
            main(["toy", "--methods", bad, "--steps", "5", "--out", str(tmp_path)])
        assert exc.value.code == 2


def test_python_dash_m_mtgrad():
    src = Path(__file__).resolve().parent.parent / "src"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "mtgrad", "toy", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--pcgrad-steps" in proc.stdout and "500,000" in proc.stdout


def test_a_misspelt_flag_gets_the_closest_one_in_its_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--methd", "pcgrad", "--out", str(tmp_path / "never")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "mtgrad train: error: unrecognized arguments: --methd pcgrad (--methd: did you mean --method?)" in err
    assert not (tmp_path / "never").exists()  # refused before anything was written


def test_a_misspelt_method_gets_a_suggestion():
    import mtgrad

    with pytest.raises(ValueError, match=r"did you mean 'pcgrad'"):
        mtgrad.from_spec("pcgard")
    with pytest.raises(ValueError, match=r"did you mean 'c'"):
        mtgrad.from_spec("cagrad:cc=0.4")


def test_a_missing_extra_is_one_line_and_leaves_no_folder(tmp_path, capsys, monkeypatch):
    from mtgrad.bench.data import qm9

    def missing(*args, **kwargs):
        raise ImportError("QM9 needs qm9pack; install the data extra: pip install mtgrad[data]")

    monkeypatch.setattr(qm9, "qm9pack_data_dir", missing)
    out = tmp_path / "never"
    code = main(["train", "--benchmark", "qm9", "--epochs", "1", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "mtgrad train: error: QM9 needs qm9pack" in err and "Traceback" not in err
    assert not out.exists()


def test_mtgrads_own_warnings_print_as_one_line_for_the_command_and_others_as_usual():
    import os
    import warnings

    from mtgrad.cli import _brief_warnings

    fmt = _brief_warnings("train", warnings.formatwarning)
    import mtgrad.cli

    ours = os.path.join(os.path.dirname(mtgrad.cli.__file__), "bench", "trainer.py")
    assert fmt(UserWarning("resuming from the previous checkpoint"), UserWarning, ours, 329) == (
        "mtgrad train: warning: resuming from the previous checkpoint\n"
    )
    theirs = fmt(FutureWarning("deprecated"), FutureWarning, os.path.join("torch", "nn", "x.py"), 7)
    assert "FutureWarning: deprecated" in theirs and theirs.startswith(os.path.join("torch", "nn", "x.py"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
        (["rl", "--device", "gpu0"], "argument --device: 'gpu0' is not a torch device"),
        (["train", "--device", "meta"], "argument --device: meta tensors hold no data"),
        (["train", "--device", "hpu"], "argument --device: hpu is not usable here"),
        (["toy", "--steps", "0"], "argument --steps: expected an integer >= 1, got 0"),
        (["compare", "--seeds", "0,,1"], "seeds are integers separated by commas"),
    ],
)
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
def test_a_device_this_torch_cannot_use_is_a_usage_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is usable here")
    with pytest.raises(SystemExit):
        main(["train", "--device", "cuda"])
    assert "argument --device: cuda is not usable here" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["toy", "train", "compare", "rl"])
def test_an_out_that_is_a_file_is_a_usage_error(command, tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("not a folder")
    with pytest.raises(SystemExit):
        main([command, "--out", str(path)])
    assert f"argument --out: {path} exists and is not a folder" in capsys.readouterr().err
    assert path.read_text() == "not a folder"
    with pytest.raises(SystemExit):
        main([command, "--out", str(path / "inside")])
    assert f"argument --out: cannot create {path / 'inside'}" in capsys.readouterr().err


def test_ctrl_c_ends_with_one_line_and_status_130(monkeypatch, capsys):
    import mtgrad.bench.trainer as trainer

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", interrupted)
    assert main(["train", "--out", "unused"]) == 130
    err = capsys.readouterr().err
    assert "mtgrad train: interrupted; run the same command again to resume" in err and "Traceback" not in err


def test_rl_refuses_a_bad_method_before_training_any(tmp_path, capsys):
    assert main(["rl", "--methods", "mean,bogus", "--out", str(tmp_path / "rl")]) == 2
    assert "unknown method 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "rl").exists()


def test_version(capsys):
    from mtgrad._version import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mtgrad {__version__}"


def test_a_loss_weighting_is_refused_by_kind_not_by_its_missing_arguments(tmp_path, capsys):
    # GradNorm needs arguments these commands never have; the refusal says what it is instead.
    with pytest.raises(SystemExit):
        main(["toy", "--methods", "gradnorm", "--out", str(tmp_path / "toy")])
    assert "(GradNorm) is not a Gramian weighting" in capsys.readouterr().err
    assert main(["rl", "--methods", "gradnorm", "--out", str(tmp_path / "rl")]) == 2
    assert "GradNorm is a loss weighting" in capsys.readouterr().err


@pytest.mark.parametrize(
    "problem, methods, pair",
    [("cagrad", "gd,mean", "'gd' and 'mean' are the same method: give it once (on the cagrad toy problem, where gd is 'mean')"),
     ("pcgrad", "gd,pcgrad,sum", "'gd' and 'sum' are the same method: give it once (on the pcgrad toy problem, where gd is 'sum')"),
     ("both", "pcgrad;pcgrad:reduction=sum", "'pcgrad' and 'pcgrad:reduction=sum' are the same method")],
)
def test_toy_refuses_two_names_of_one_method(tmp_path, capsys, problem, methods, pair):
    with pytest.raises(SystemExit) as info:
        main(["toy", "--problem", problem, "--methods", methods, "--out", str(tmp_path / "o"), "--no-progress"])
    assert info.value.code == 2
    assert f"specs {pair}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_toy_gd_and_mean_differ_on_the_pcgrad_toy(tmp_path):
    # There 'gd' is Adam on L1 + L2 (Sum): mean is another method, and both run.
    assert main(["toy", "--problem", "pcgrad", "--steps", "2", "--methods", "gd,mean", "--out", str(tmp_path),
                 "--no-plots", "--no-progress"]) == 0
    _, rows = _read(tmp_path / "toy_pcgrad.csv")
    assert {r["method"] for r in rows} == {"gd", "mean"}


def test_an_empty_spec_in_a_method_list_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["toy", "--methods", "gd;;mgda", "--out", str(tmp_path / "o"), "--no-progress"])
    assert "empty item in 'gd;;mgda'" in capsys.readouterr().err


def test_the_torch_only_commands_run_without_numpy(tmp_path):
    # numpy is no core dependency: train/compare on built-in data run on torch alone, and rl
    # (which needs numpy) says which extra to install instead of a traceback.
    script = (
        "import sys; sys.modules['numpy'] = None\n"  # import numpy now raises ImportError
        "from mtgrad.cli import main\n"
        f"assert main(['train', '--benchmark', 'linear', '--epochs', '1', '--out', {str(tmp_path / 't')!r}, '--no-progress']) == 0\n"
        f"sys.exit(main(['rl', '--steps', '10', '--out', {str(tmp_path / 'r')!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "multi-task RL needs the rl extra: pip install 'mtgrad[rl]'" in done.stderr
    assert "Traceback" not in done.stderr
    assert (tmp_path / "t" / "checkpoint.pt").is_file() and not (tmp_path / "r").exists()


def test_rl_refuses_a_bad_benchmark_before_any_note_or_folder(tmp_path, capsys):
    pytest.importorskip("metaworld")
    with pytest.raises(SystemExit):
        main(["rl", "--benchmark", "mt11", "--steps", "10", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "unknown benchmark 'mt11'" in err and "no preset of its own" not in err
    assert main(["rl", "--benchmark", "custom:reach-v9", "--steps", "10", "--out", str(tmp_path / "b")]) == 2
    assert "unknown Meta-World environments ['reach-v9']" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before any run's folder was made


def test_an_out_folder_the_system_refuses_is_named_as_the_out_argument(tmp_path, capsys, monkeypatch):
    import mtgrad.bench.trainer as trainer

    out = tmp_path / "denied"
    makedirs = os.makedirs

    def refuse(path, *args, **kwargs):  # e.g. /proc/x: writable by its mode bits, not creatable
        if os.fspath(path).startswith(str(out)):
            raise FileNotFoundError(2, "No such file or directory", path)
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(trainer.os, "makedirs", refuse)
    assert main(["train", "--benchmark", "linear", "--epochs", "1", "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"mtgrad train: error: argument --out: cannot create {out}: [Errno 2]" in err
