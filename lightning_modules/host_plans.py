"""Host plans in training and evaluation: every forward of a step without a host synchronisation.

Without a plan, the retained forward reads two values back from the device per gate (``int(counts.max())``,
the retained width M_max, and ``bool(valid.all())``, whether a key mask is needed), and the stock model
reads one more from its 2-d attention mask (``padding_mask.all()``); on an accelerator each read-back
waits for every queued kernel. A :class:`retention.selection.HostPlan` holds those values worked out on
the host from the batch's valid lengths and protected counts (:meth:`RetentionEncoder.batch_plan`).

Where it is built: in the LightningModule hook ``on_before_batch_transfer``, which Lightning calls with
the collated batch still on the host, just before it moves the batch to the device (training,
validation and test alike). Not in the collate: the plan depends on the encoder's budget (``retention
evaluate`` changes it per ρ between test loops) and on the task's protection rule (the special tokens,
QA's question, MQAR's queries), which only the system knows, and the hook holds the very CPU tensors
the collate made.

How it rides along: ``batch[HOST_PLAN]`` is an :class:`OnHost` holder. Lightning's
``transfer_batch_to_device`` (``apply_to_collection``) moves every tensor it finds inside Mappings,
sequences, namedtuples and dataclasses, and refuses a frozen dataclass (a ``HostPlan`` is one); a plain
object is none of those, so it stays on the host, untouched.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import torch

from retention.selection import HostPlan

__all__ = ["HOST_PLAN", "HostPlans", "OnHost", "host_plan_of"]

HOST_PLAN = "host_plan"
"""The batch key of the batch's :class:`OnHost` host plan (absent: the forward reads the widths back)."""


class OnHost:
    """``value``, carried in a batch without being moved to the device (see the module docstring)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def host_plan_of(batch: dict) -> HostPlan | None:
    """The batch's host plan, or None (a batch that did not come through Lightning's transfer)."""
    holder = batch.get(HOST_PLAN)
    return None if holder is None else holder.value


class HostPlans:
    """Mixin of :class:`lightning_modules.system.RetentionSystem`: attaches a host plan to every batch
    before it moves to the device, for an encoder that makes them (a ``RetentionEncoder``; the
    sparse-attention comparators select nothing). ``host_plans = False`` leaves batches as they come,
    so every forward reads its widths back (the path before host plans; tests compare the two).
    A task whose forward gets a ``protected`` mask of its own overrides :meth:`protected`."""

    host_plans = True

    def protected(self, batch: dict) -> torch.Tensor | None:
        """The ``protected`` mask the task's forward passes to the encoder (None: the encoder's own
        protected token ids); it is called on the host-side batch as on the device-side one."""
        return None

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        encoder = self.encoder
        # a dict, or the BatchEncoding (a UserDict) of the Hugging Face collators
        if self.host_plans and isinstance(batch, MutableMapping) and "input_ids" in batch and hasattr(encoder, "batch_plan"):
            plan = encoder.batch_plan(batch["input_ids"], batch.get("attention_mask"), self.protected(batch))
            batch[HOST_PLAN] = OnHost(plan)
        return batch
