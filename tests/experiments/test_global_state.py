"""Experiment code leaves global state alone; ``import kadam`` needs none of the experiments extra."""

import subprocess
import sys
import textwrap

import torch

from kadam.experiments.cells import _call
from kadam.experiments.stability.protocol import training_protocol
from kadam.experiments.training.protocol import train_run


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)


def test_import_kadam_imports_no_plotting_dataset_or_progress_package():
    result = _run("""
        import sys
        import kadam, kadam.flow, kadam.normalization, kadam.stability
        loaded = sorted({m.split('.')[0] for m in sys.modules} & {'matplotlib', 'sklearn', 'mnist1d', 'rich'})
        print(loaded)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_plots_keep_the_users_matplotlib_backend_and_never_load_pyplot(tmp_path):
    result = _run(f"""
        import sys
        import matplotlib
        matplotlib.use("pdf")
        from kadam.experiments.stability.plots import plot_region_map
        plot_region_map({str(tmp_path / "region.png")!r})
        print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pdf", "False"]
    assert (tmp_path / "region.png").read_bytes()[:4] == b"\x89PNG"


def test_cells_leave_the_global_torch_generator_and_threads_alone():
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    train_run("mnist1d-mlp", "adam", 1e-3, steps=3, batch_size=8, seed=5, task_sizes={"hidden": 8, "depth": 1})
    training_protocol(
        [0.9],
        [0.95],
        1e-2,
        {"steps": 3, "corpus_chars": 64, "context": 8, "width": 8, "heads": 1, "layers": 1, "seed": 0},
    )
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)


def _reports(progress=None):
    return {"progress": progress}


def test_a_cells_own_progress_argument_is_never_replaced():
    assert _call(_reports, {"progress": False}, lambda done, total: None)[0] == {"progress": False}
    callback = _call(_reports, {}, lambda done, total: None)[0]["progress"]
    assert callable(callback)


def test_reproduce_without_the_experiments_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    from kadam.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # find_spec then reports it missing
    assert main(["reproduce", "--profile", "smoke", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "pip install 'kadam[experiments]'" in error and "matplotlib" in error
