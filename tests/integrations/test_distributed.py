"""KAdam under DDP, ZeroRedundancyOptimizer and FSDP2 on CPU: gloo, 2 processes (issue 8).

The scenarios live in ``distributed_scenarios.py``; one spawn runs them all and these tests read the records.
"""

from __future__ import annotations

import json
from typing import Any

import distributed_scenarios as scenarios
import pytest
import torch.multiprocessing as mp

# float32 on both sides; the gloo all-reduce sums in another order than one process does.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("distributed")
    mp.spawn(scenarios.run_rank, args=(str(workdir),), nprocs=scenarios.WORLD_SIZE, join=True)
    return json.loads((workdir / "results.json").read_text())


def record(records: dict[str, Any], name: str) -> dict[str, Any]:
    result = records[name]
    if "error" in result:
        pytest.fail(f"{name} raised in the worker:\n{result['error']}", pytrace=False)
    return result


CASES = [(config, implementation) for config in scenarios.CONFIGS for implementation in scenarios.IMPLEMENTATIONS]


@pytest.mark.parametrize(("config", "implementation"), CASES)
def test_ddp_ranks_agree_and_match_single_process(records: dict[str, Any], config: str, implementation: str) -> None:
    result = record(records, f"ddp-{config}-{implementation}")
    assert result["ranks_identical"]
    assert result["max_difference_to_single_process"] <= TOLERANCE


@pytest.mark.parametrize(("config", "implementation"), CASES)
def test_zero_redundancy_trains_partitions_and_resumes_exactly(
    records: dict[str, Any], config: str, implementation: str
) -> None:
    result = record(records, f"zero-{config}-{implementation}")
    assert result["ranks_identical"]
    assert result["max_difference_to_single_process"] <= TOLERANCE
    assert result["resume_exact"]
    # Each rank keeps optimizer state for its own partition only, and the partitions cover every parameter.
    per_rank = result["parameters_with_state_per_rank"]
    assert all(0 < count < result["parameter_count"] for count in per_rank)
    assert sum(per_rank) == result["parameter_count"]


@pytest.mark.parametrize(("config", "implementation"), CASES)
def test_fsdp2_on_dtensors_matches_unsharded_and_resumes_from_dcp(
    records: dict[str, Any], config: str, implementation: str
) -> None:
    result = record(records, f"fsdp2-{config}-{implementation}")
    assert result["parameters_are_dtensors"]
    assert result["ranks_identical"]
    assert result["max_difference_to_single_process"] <= TOLERANCE
    assert result["resume_exact"]
    assert result["sharded_state_tensors"] > 0
    assert {f"__{rank}_0.distcp" for rank in range(scenarios.WORLD_SIZE)} <= set(result["checkpoint_files"])


def test_every_scenario_was_recorded(records: dict[str, Any]) -> None:
    assert sorted(records) == sorted(scenarios.scenario_names())
