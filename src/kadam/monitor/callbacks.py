"""Framework callbacks that attach a :class:`~kadam.monitor.StabilityMonitor`: Hugging Face's Trainer and Lightning.

Each class is created on first access (``kadam.monitor.HuggingFaceMonitorCallback``), so importing
:mod:`kadam.monitor` needs neither framework.
"""

from __future__ import annotations

from typing import Any

from kadam.monitor.monitor import StabilityMonitor

__all__ = ["callback_class"]


def _huggingface_callback() -> type:
    from transformers import TrainerCallback

    class HuggingFaceMonitorCallback(TrainerCallback):
        """Attach a :class:`StabilityMonitor` to the Trainer's optimizer at ``on_train_begin``; remove it at the end.

        Keyword arguments are :class:`StabilityMonitor`'s; ``names`` defaults to the Trainer's model.
        The monitor is ``callback.monitor``. ``on_log`` adds the largest bound ratio and spike factor
        over tensors at the last recorded step to the Trainer's ``log_history`` entry and to ``logs``
        (reporting callbacks listed before this one have already been called with ``logs``).
        """

        def __init__(self, **monitor_kwargs: Any) -> None:
            self.monitor_kwargs = monitor_kwargs
            self.monitor: StabilityMonitor | None = None

        def on_train_begin(
            self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **kwargs: Any
        ) -> None:
            if optimizer is None:
                raise ValueError("HuggingFaceMonitorCallback: the Trainer passed no optimizer to on_train_begin")
            self.monitor = StabilityMonitor(optimizer, **{"names": model, **self.monitor_kwargs})

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
        ) -> None:
            if self.monitor is None or logs is None:
                return
            summary = self.monitor.summary()
            logs.update(summary)  # seen by the callbacks after this one
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1].update(summary)  # the Trainer copied ``logs`` there before on_log

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.monitor is not None:
                self.monitor.remove()

    return HuggingFaceMonitorCallback


def _lightning_callback() -> type:
    import lightning.pytorch as pl

    class LightningMonitorCallback(pl.Callback):
        """Attach a :class:`StabilityMonitor` to the first optimizer at ``on_train_start``; remove it at the end.

        Keyword arguments are :class:`StabilityMonitor`'s; ``names`` defaults to the LightningModule.
        ``on_train_batch_end`` logs the worst bound ratio and spike factor of the last recorded step
        with ``pl_module.log``.
        """

        def __init__(self, **monitor_kwargs: Any) -> None:
            self.monitor_kwargs = monitor_kwargs
            self.monitor: StabilityMonitor | None = None

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.monitor = StabilityMonitor(trainer.optimizers[0], **{"names": pl_module, **self.monitor_kwargs})

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            if self.monitor is not None:
                for key, value in self.monitor.summary().items():
                    pl_module.log(key, value, on_step=True, on_epoch=False)

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            if self.monitor is not None:
                self.monitor.remove()

    return LightningMonitorCallback


_FACTORIES = {"HuggingFaceMonitorCallback": _huggingface_callback, "LightningMonitorCallback": _lightning_callback}


def callback_class(name: str) -> type:
    """The callback class ``name`` (``"HuggingFaceMonitorCallback"`` or ``"LightningMonitorCallback"``),
    created on first use (it imports its framework)."""
    return _FACTORIES[name]()
