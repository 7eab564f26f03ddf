"""Host plans in training and evaluation: every forward of a step without a host synchronisation.

Without a plan, the retained forward reads two values back from the device per gate (``int(counts.max())``,
the retained width M_max, and ``bool(valid.all())``, whether a key mask is needed), and the stock model
reads one more from its 2-d attention mask (``padding_mask.all()``); on an accelerator each read-back
waits for every queued kernel. A :class:`retention.selection.HostPlan` holds those values worked out on
the host from the batch's valid lengths and protected counts (:meth:`RetentionEncoder.batch_plan`).

Where it is built: in the step, by :meth:`HostPlans.host_plan_of`, from the batch's host view
(``batch[datamodules.loaders.HOST_VIEW]``): the collate of every split keeps the collated CPU tensors in
an :class:`datamodules.loaders.OnHost` holder, which Lightning's transfer leaves on the host while it
moves the batch to the device. Counting there reads nothing back. Not in the collate: the plan depends on
the encoder's budget (``retention evaluate`` changes it per ρ between test loops; built in the step, the
plan has the budget of that step) and on the task's protection rule (the special tokens, QA's question,
MQAR's queries), which only the system knows. Not in Lightning's ``on_before_batch_transfer`` hook,
which also sees the host-side batch: a LightningModule that overrides it while a DataModule is passed
makes Lightning warn on every run.
"""

from __future__ import annotations

import torch

from datamodules.loaders import host_view
from retention.selection import HostPlan

__all__ = ["HostPlans"]


class HostPlans:
    """Mixin of :class:`lightning_modules.system.RetentionSystem`: builds each batch's host plan for
    an encoder that makes them (a ``RetentionEncoder``; the sparse-attention comparators select
    nothing). ``host_plans = False`` makes no plans, so every forward reads its widths back (the path
    before host plans; tests compare the two). A task whose forward gets a ``protected`` mask of its
    own overrides :meth:`protected`."""

    host_plans = True

    def protected(self, batch: dict) -> torch.Tensor | None:
        """The ``protected`` mask the task's forward passes to the encoder (None: the encoder's own
        protected token ids); it is called on the host view as on the device-side batch."""
        return None

    def host_plan_of(self, batch: dict) -> HostPlan | None:
        """The batch's host plan for the encoder's current budget, built from the batch's host view;
        None for a batch without one (built by hand, not by :mod:`datamodules.loaders`), an encoder
        that makes no plans, or ``host_plans = False``."""
        view = host_view(batch)
        encoder = self.encoder
        if view is None or not self.host_plans or not hasattr(encoder, "batch_plan"):
            return None
        return encoder.batch_plan(view["input_ids"], view.get("attention_mask"), self.protected(view))
