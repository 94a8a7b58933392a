"""KAdam in the Hugging Face ``Trainer``: a tiny GPT-2 built from its config, offline (issue 8).

KAdam goes in both ways the Trainer takes an optimizer: an instance (``optimizers=(KAdam(...), None)``,
with parameter groups from ``param_groups_for``) and a class (``optimizer_cls_and_kwargs``, where the
Trainer builds the groups itself and sets their ``weight_decay`` from ``TrainingArguments``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from kadam import KAdam
from kadam.optimizer.param_groups import param_groups_for

STEPS = 20
BATCH = 4
SEQUENCE = 12
VOCAB = 32
WEIGHT_DECAY = 0.01
KADAM_KWARGS: dict[str, Any] = {"lr": 3e-2, "k": 2}
HOWS = ["optimizers", "optimizer_cls_and_kwargs"]


class CountingSequences(torch.utils.data.Dataset):
    """Sequences ``s, s+1, s+2, …`` (mod VOCAB): next-token prediction that a one-layer GPT-2 learns fast."""

    def __init__(self, size: int) -> None:
        self.starts = torch.randint(0, VOCAB, (size,), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        tokens = (self.starts[index] + torch.arange(SEQUENCE)) % VOCAB
        return {"input_ids": tokens, "labels": tokens}


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=SEQUENCE,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def make_trainer(how: str, output_dir: Path) -> Trainer:
    model = tiny_gpt2()
    arguments = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        weight_decay=WEIGHT_DECAY,
        logging_steps=1,
        save_strategy="steps",
        save_steps=STEPS // 2,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    common = {"model": model, "args": arguments, "train_dataset": CountingSequences(STEPS * BATCH)}
    if how == "optimizers":
        optimizer = KAdam(param_groups_for(model, weight_decay=WEIGHT_DECAY), **KADAM_KWARGS)
        return Trainer(**common, optimizers=(optimizer, None))
    return Trainer(**common, optimizer_cls_and_kwargs=(KAdam, KADAM_KWARGS))


class Run(NamedTuple):
    output_dir: Path
    losses: list[float]
    parameters: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer


def train(how: str, output_dir: Path, resume_from: Path | None = None) -> Run:
    trainer = make_trainer(how, output_dir)
    trainer.train(resume_from_checkpoint=None if resume_from is None else str(resume_from))
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    parameters = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate wraps it
    return Run(output_dir, losses, parameters, optimizer)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    return {how: train(how, tmp_path_factory.mktemp(how)) for how in HOWS}


@pytest.mark.parametrize("how", HOWS)
def test_trainer_trains_with_kadam(runs: dict[str, Run], how: str) -> None:
    run = runs[how]
    assert type(run.optimizer) is KAdam
    assert len(run.losses) == STEPS
    assert sum(run.losses[-5:]) < 0.5 * sum(run.losses[:5])


def test_param_groups_for_matches_the_trainers_own_decay_groups(runs: dict[str, Run]) -> None:
    # Same decay on the same tensors (biases and LayerNorm weights excluded) gives the same training.
    first, second = (runs[how].parameters for how in HOWS)
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("how", HOWS)
def test_trainer_checkpoint_resumes_with_the_optimizer_state(runs: dict[str, Run], how: str, tmp_path: Path) -> None:
    checkpoint = runs[how].output_dir / f"checkpoint-{STEPS // 2}"
    saved = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    for param_state in saved["state"].values():
        assert param_state["step"].item() == STEPS // 2
        assert param_state["exp_avg_sq_2"].dim() == 0  # level 2 in tensor mode: one scalar per tensor
        assert "exp_avg_2" not in param_state  # level 2 has beta1 = 0: m = x is not stored
    resumed = train(how, tmp_path, resume_from=checkpoint)
    assert resumed.losses == runs[how].losses  # the first half restored from the checkpoint, the rest retrained
    uninterrupted = runs[how].parameters
    assert all(torch.equal(resumed.parameters[name], uninterrupted[name]) for name in uninterrupted)
