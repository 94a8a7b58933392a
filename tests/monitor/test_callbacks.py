"""The monitor's Hugging Face TrainerCallback and Lightning Callback, offline (as tests/integrations)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kadam import KAdam


def test_huggingface_callback_monitors_the_trainers_optimizer(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from kadam.monitor import HuggingFaceMonitorCallback

    vocab, length, steps = 32, 12, 8

    class Counting(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return steps * 4

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            tokens = (index + torch.arange(length)) % vocab
            return {"input_ids": tokens, "labels": tokens}

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_positions=length,
            n_embd=16,
            n_layer=1,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )
    arguments = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    callback = HuggingFaceMonitorCallback(every=2, warn=False)
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=Counting(),
        optimizer_cls_and_kwargs=(KAdam, {"lr": 1e-2, "k": 2}),
        callbacks=[callback],
    )
    trainer.train()
    monitor = callback.monitor
    assert monitor is not None and isinstance(monitor.optimizer, KAdam)
    history = monitor.history
    assert list(history.steps) == [2, 4, 6, 8]
    assert "transformer.h.0.attn.c_attn.weight" in history.names
    assert np.isfinite(history["bound_ratio_L2"]["transformer.h.0.attn.c_attn.weight"]).all()
    assert not monitor._handles  # detached at on_train_end
    logged = [entry for entry in trainer.state.log_history if "monitor/max_bound_ratio" in entry]
    assert logged and all(0 < entry["monitor/max_bound_ratio"] <= 1 for entry in logged)


def test_lightning_callback_monitors_the_first_optimizer() -> None:
    import lightning.pytorch as pl

    from kadam.monitor import LightningMonitorCallback

    class Regression(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))

        def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
            inputs, targets = batch
            return nn.functional.mse_loss(self.net(inputs), targets)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.AdamW(self.parameters(), lr=3e-2)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(48, 4, generator=generator)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, inputs[:, :2] * 2), batch_size=8)
    callback = LightningMonitorCallback(every=1, warn=False)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        callbacks=[callback],
    )
    trainer.fit(Regression(), train_dataloaders=data)
    history = callback.monitor.history
    assert list(history.steps) == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose(history["lr"]["net.0.weight"], [3e-2] * 3 + [1.5e-2] * 3)
    assert not callback.monitor._handles
    assert "monitor/max_spike_factor" in trainer.callback_metrics
