"""A per-rank probe for the DDP launcher tests (tests/test_ddp_launchers.py), added to the Trainer of a
``retention train`` run through Lightning's supported entry-point group
``lightning.pytorch.callbacks_factory``: the test writes a ``*.dist-info`` whose entry point is
:func:`factory`, puts it on the subprocess's ``PYTHONPATH``, and sets ``$RETENTION_DDP_PROBE`` to a folder.
Every rank then writes ``rank<global rank>.json`` there when training ends: its λ, gate parameters, step and
checkpoint folder, the state each rank holds (only rank 0 writes checkpoints)."""

import json
import os
from pathlib import Path

import lightning as L

ENV = "RETENTION_DDP_PROBE"


class LambdaPerRank(L.Callback):
    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                  "lambda": [float(v) for v in pl_module.lam.detach().cpu()],
                  "gates": [p.detach().cpu().flatten().tolist() for p in pl_module.encoder.gates.parameters()],
                  "checkpoint_dir": trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None,
                  "pid": os.getpid()}
        path = Path(self.folder) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def factory() -> list:
    """The callbacks for the entry point: the probe when ``$RETENTION_DDP_PROBE`` names a folder."""
    folder = os.environ.get(ENV)
    return [LambdaPerRank(folder)] if folder else []
