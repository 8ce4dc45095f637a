"""The bit-vector VAE's pixel likelihood: plain path against the fused (torch.compile) path.

``BitVectorVAE.distortion`` (decoder ``D → 128 → 784·5``, then the shared ``Linear(5 → 256)``
and the 256-way NLL of every pixel, ``experiments/tasks/pixel_likelihood.py``) at the protocol's
sizes (D = 32), timed in interleaved rounds with ``model.fused_likelihood`` off and on:

- evaluation: no gradient, ``--eval-decodes`` decoder calls at once (200: the importance-sampled
  NLL's chunk, 2 samples x the evaluation batch of 100); printed per decoder call;
- training: forward + backward through the decoder and the pixel layer for a batch of 64
  decodes (one training step of SFE).

Printed: the median over the rounds of each (ms) and the ratio plain / fused. The first fused
call compiles (a few seconds, not timed).

    THP_MEM_ALLOC_ENABLE=1 python benchmarks/bench_pixel_likelihood.py [--repeats 15]

(``THP_MEM_ALLOC_ENABLE=1``: transparent huge pages, as the ``latentgrad`` command sets for this
task.) Measured (2026-12-03, 1 thread of the 2-vCPU AMD EPYC development machine, background
runs paused, 15 rounds): evaluation 0.49 ms plain, 0.21 ms fused per decoder call (2.4x);
training 96 ms plain, 48 ms fused per step (2.0x). With 50 to 3,200 decodes at once the fused
evaluation measured 0.18-0.25 ms per call, the plain one 0.57-1.1 ms (slowest from 800).
Later, with the fused logsumexp in one pass (shifted by a bound of the maximum; 9 rounds, old
and new code alternating twice): evaluation 0.243 and 0.222 -> 0.200 and 0.195 ms fused per
decoder call (plain 0.57-0.61 throughout); training unchanged (50-62 ms fused).
"""

from __future__ import annotations

import statistics

import torch
from _timing import benchmark_parser, start, time_call

from latentgrad.experiments.config import resolve, to_dict
from latentgrad.experiments.tasks import bitvector_vae as task

PIXELS = 784


def main() -> None:
    parser = benchmark_parser(__doc__, threads=1, repeats=15)
    parser.add_argument("--eval-decodes", type=int, default=200)
    parser.add_argument("--train-decodes", type=int, default=64)
    args = parser.parse_args()
    device = start(args)
    cfg = to_dict(resolve(task.Config, "bitvector_vae", "sfe", 0))
    model = task.BitVectorVAE(cfg, PIXELS).to(device)
    bits = model.bits

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.bernoulli(torch.full((n, bits), 0.5, device=device))
        return torch.randint(0, 256, (n, PIXELS), device=device), z

    x_eval, z_eval = batch(args.eval_decodes)
    x_train, z_train = batch(args.train_decodes)

    def evaluate() -> torch.Tensor:
        with torch.no_grad():
            return model.distortion(x_eval, z_eval)

    def train() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model.distortion(x_train, z_train).sum()
        loss.backward()
        return loss.detach()

    cases = {"evaluation": evaluate, "training": train}
    times: dict[tuple[str, bool], list[float]] = {(c, f): [] for c in cases for f in (0, 1)}
    results = {}
    for fused in (False, True):  # warm-up; the fused path compiles here
        model.cfg.model.fused_likelihood = fused
        results[fused] = [fn() for fn in cases.values()]
    for got, want in zip(results[True], results[False], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    for _ in range(args.repeats):
        for case, fn in cases.items():
            for fused in (False, True):
                model.cfg.model.fused_likelihood = fused
                times[case, fused].append(time_call(fn, device)[1] * 1e3)
    per_call = {"evaluation": args.eval_decodes, "training": 1}
    print(f"device {device}, {args.threads} thread(s), {args.repeats} interleaved rounds, median")
    for case in cases:
        plain, fused = (statistics.median(times[case, f]) / per_call[case] for f in (0, 1))
        unit = "ms per decoder call" if case == "evaluation" else "ms per step"
        print(f"{case:<11} plain {plain:8.3f}  fused {fused:8.3f} {unit}  "
              f"ratio {plain / fused:5.2f}")


if __name__ == "__main__":
    main()
