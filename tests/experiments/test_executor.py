"""Cells on a Dask cluster: a two-worker local cluster computes the same results, into the same cache, as the
process pool and this process; each cell runs with one torch thread there too."""

import pytest
from rich.console import Console

from kadam.experiments.cells import Cell, CellCache, CellRunner, _dask_call, parse_executor
from kadam.experiments.comparison.protocol import train_trial

HP = {"lr": 0.05, "beta": 0.9, "gamma": 0.999, "weight_decay": 0.01, "warmup_fraction": 0.1}
TIMING = {"seconds", "training_seconds", "seconds_per_step", "curve_seconds"}


def _cells():
    return [
        Cell(
            "test",
            f"{arm} seed {seed}",
            train_trial,
            {
                "workload": "noisy-quadratic",
                "arm": arm,
                "hyperparameters": HP,
                "steps": 20,
                "batch_size": 8,
                "seed": seed,
                "sizes": {"dimension": 10},
                "curve_points": 4,
            },
            cost=0.1,
        )
        for arm in ("adamw", "kadam2")
        for seed in (0, 1)
    ]


def _run(directory, **options):
    runner = CellRunner(CellCache(directory), console=Console(quiet=True), show_progress=False, **options)
    with runner.session(1.0):
        results = runner.run(_cells())
    return runner, results


def _numbers(results):
    return {key: {k: v for k, v in result.items() if k not in TIMING} for key, result in results.items()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def test_a_two_worker_dask_cluster_computes_what_the_other_executors_do(tmp_path):
    dask_runner, on_dask = _run(tmp_path / "dask", executor="dask", jobs=2)
    _, in_process = _run(tmp_path / "serial", jobs=1)
    _, in_pool = _run(tmp_path / "pool", jobs=2)
    assert len(dask_runner.computed) == 4 and not dask_runner.cached
    assert _numbers(on_dask) == _numbers(in_process) == _numbers(in_pool)
    assert sorted(p.name for p in (tmp_path / "dask").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "serial").glob("*.json")
    )  # the same keys, so either cache serves the other
    again, cached = _run(tmp_path / "dask", jobs=1)  # the process pool reads what the cluster wrote
    assert not again.computed and len(again.cached) == 4 and cached == on_dask


def test_dask_workers_run_each_cell_with_one_torch_thread(tmp_path):
    runner = CellRunner(CellCache(tmp_path), executor="dask", jobs=2, console=Console(quiet=True), show_progress=False)
    with runner.session(1.0):
        threads = runner._client.submit(_dask_call, _threads, {})
        assert threads.result()[0] == 1


@pytest.mark.parametrize("value", ["process", "dask", "tcp://10.0.0.1:8786"])
def test_executor_values_accepted(value):
    assert parse_executor(value) == value


@pytest.mark.parametrize("value", ["", "spark", "tcp://", "host:8786"])
def test_executor_values_refused(value):
    with pytest.raises(ValueError, match="executor must be one of process, dask or a Dask scheduler address"):
        parse_executor(value)
