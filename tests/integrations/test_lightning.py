"""KAdam in PyTorch Lightning (issue 8).

``configure_optimizers`` returns KAdam with a per-step scheduler; fit, checkpoint after each epoch, resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from kadam import KAdam

STEPS_PER_EPOCH = 6
EPOCHS = 4
RESUME_EPOCH = EPOCHS // 2  # resume from the checkpoint written at the end of this many epochs
BATCH = 8


class Regression(pl.LightningModule):
    """A two-layer MLP fitting a fixed random linear map; KAdam (k = 2) with a per-step StepLR."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = nn.functional.mse_loss(self.net(inputs), targets)
        self.log("loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = KAdam(self.parameters(), lr=3e-2, k=2, weight_decay=1e-2)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=STEPS_PER_EPOCH, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data() -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(STEPS_PER_EPOCH * BATCH, 4, generator=generator)
    targets = inputs @ torch.randn(4, 2, generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=BATCH)


class LossHistory(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, batch_index: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))


def fit(module: Regression, root: Path, ckpt_path: Path | None = None) -> tuple[pl.Trainer, LossHistory]:
    """Fit for EPOCHS epochs, writing ``root/epoch={n}.ckpt`` after every epoch."""
    history = LossHistory()
    checkpoints = ModelCheckpoint(dirpath=root, every_n_epochs=1, save_top_k=-1, filename="{epoch}")
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[history, checkpoints],
        default_root_dir=root,
    )
    trainer.fit(module, train_dataloaders=data(), ckpt_path=ckpt_path)
    return trainer, history


# The resumed fit writes its epoch checkpoints into the same folder, which Lightning warns about.
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_fit_checkpoint_and_resume_with_kadam_and_scheduler(tmp_path: Path) -> None:
    module = Regression()
    trainer, history = fit(module, tmp_path)
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, KAdam)
    assert len(history.losses) == EPOCHS * STEPS_PER_EPOCH
    first_epoch, last_epoch = history.losses[:STEPS_PER_EPOCH], history.losses[-STEPS_PER_EPOCH:]
    assert sum(last_epoch) < 0.5 * sum(first_epoch)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-2 * 0.7**EPOCHS, rel=1e-12)

    checkpoint = tmp_path / f"epoch={RESUME_EPOCH - 1}.ckpt"
    saved = torch.load(checkpoint, weights_only=False)
    resumed_steps = RESUME_EPOCH * STEPS_PER_EPOCH
    assert all(state["step"].item() == resumed_steps for state in saved["optimizer_states"][0]["state"].values())
    assert saved["lr_schedulers"][0]["last_epoch"] == resumed_steps

    resumed_module = Regression()
    resumed_trainer, resumed_history = fit(resumed_module, tmp_path, ckpt_path=checkpoint)
    assert resumed_history.losses == history.losses[resumed_steps:]
    assert resumed_trainer.optimizers[0].param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for (name, expected), (_, got) in zip(module.named_parameters(), resumed_module.named_parameters(), strict=True):
        assert torch.equal(got, expected), name
