"""The protocols return exactly the fields their TypedDicts declare (the contract between protocol and section)."""

from kadam.experiments.stability.protocol import (
    ProtocolCell,
    ProtocolRow,
    SwitchOffResult,
    switch_off_experiment,
    training_protocol,
)
from kadam.experiments.training.protocol import TrainRun, train_run


def test_stability_protocols_match_their_types():
    switch = switch_off_experiment(point_limit=2, kadam2_points=())
    assert set(switch) == set(SwitchOffResult.__annotations__)
    cell = training_protocol(
        [0.9],
        [0.5, 0.95],
        1e-2,
        {"steps": 12, "corpus_chars": 64, "context": 8, "width": 8, "heads": 1, "layers": 1, "seed": 0},
    )
    assert set(cell) == set(ProtocolCell.__annotations__) and len(cell["rows"]) == 2
    assert all(set(row) == set(ProtocolRow.__annotations__) for row in cell["rows"])


def test_train_run_matches_its_type():
    run = train_run("mnist1d-mlp", "adamw", 1e-3, steps=4, batch_size=8, seed=0, task_sizes={"hidden": 8, "depth": 1})
    assert set(run) == set(TrainRun.__annotations__)
