"""Run the project's one training entry point, commands.runner.train(cfg, logger=...), with
config overrides from argv (e.g. trainer.accelerator=gpu trainer.precision=bf16-mixed). MLflow is not
on the device machine, so a CSVLogger with the two attributes train() reads stands in for MLFlowLogger.
Prints the summary and a JSON line with wall time."""
import json
import sys
import time

from lightning.pytorch.loggers import CSVLogger

from commands.cli import EXIT_CONFIG_ERROR
from commands.runner import check_config, train
from conf.compose import compose
from conf.schema import ConfigError


class RunLogger(CSVLogger):
    run_id = "gpucheck"
    _tracking_uri = "CSVLogger (no MLflow on the device)"

    @property
    def experiment(self):
        exp = super().experiment
        if not hasattr(exp, "set_tag"):
            exp.set_tag = lambda *a, **k: None
        return exp


def main() -> int:
    out, overrides = sys.argv[1], sys.argv[2:]
    import os
    if os.environ.get("GPUCHECK_STOCK") == "1":  # the soft path through the stock SDPA call (a grad-requiring mask)
        import retention.fastpath as fp
        from transformers import AttentionInterface
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        AttentionInterface.register(fp.SOFT_GATE_ATTENTION, sdpa_attention_forward)
        print("soft path: stock SDPA call", flush=True)
    try:
        cfg = compose(overrides, None)
        check_config(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    t0 = time.perf_counter()
    summary = train(cfg, logger=RunLogger(save_dir=out, name="csv"))
    wall = time.perf_counter() - t0
    import torch
    info = {"overrides": overrides, "wall_s": wall, "cuda": torch.cuda.is_available(),
            "max_memory_allocated": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
            **{k: summary[k] for k in ("dense", "soft", "retained", "kept", "lambda", "checkpoint")}}
    print("TRAIN_RESULT " + json.dumps(info, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
