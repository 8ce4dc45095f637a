"""Run the latentgrad CLI in this process and SIGKILL it at a chosen point (resume tests).

    python _kill.py POINT N ARGS...

POINT ``step``: right after the N-th optimizer step (before that step's checkpoint); ``term``:
the same with SIGTERM instead of SIGKILL (Lightning stops the run at the end of the batch);
``term-validate``: SIGTERM at the start of the N-th validation batch;
``save``: right after the N-th file of the checkpoints folder is in place; ``write``: during the
N-th write into the checkpoints folder, before its temp file is moved into place (it stays as an
orphan).
``run_args`` gives the arguments of the small run these tests kill.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def run_args(task: str, estimator: str, out: Path) -> list[str]:
    """CLI arguments of a ``tiny`` run of three epochs checkpointed after every optimizer step,
    one thread: what the kill-and-resume tests run (with ``--resume`` after a kill)."""
    return ["run", task, "--estimator", estimator, "--out", str(out), "profile=tiny",
            "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1",
            "trainer.num_threads=1"]  # fmt: skip


def main() -> None:
    point, n, args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count == n:
            term = point.startswith("term")
            os.kill(os.getpid(), signal.SIGTERM if term else signal.SIGKILL)

    if point in ("step", "term"):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *_: tick())
    elif point == "term-validate":
        from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop

        evaluation_step = _EvaluationLoop._evaluation_step

        def signalling_step(loop, *args, **kwargs):
            if loop.trainer.validating:
                tick()
            return evaluation_step(loop, *args, **kwargs)

        _EvaluationLoop._evaluation_step = signalling_step
    else:
        from latentgrad.experiments import checkpoint

        finish = checkpoint._finish

        def killing_finish(tmp: str, path: Path) -> None:
            ours = Path(path).parent.name == "checkpoints"
            if ours and point == "write":
                tick()
            finish(tmp, path)
            if ours and point == "save":
                tick()

        checkpoint._finish = killing_finish
    from latentgrad.experiments.cli import main as cli

    sys.exit(cli(args))


if __name__ == "__main__":
    main()
