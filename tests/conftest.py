"""Suite-wide settings: one intra-op thread per test process (pytest -n 2 uses both cores;
`LATENTGRAD_TEST_THREADS=2` runs the suite on two, to check that no result depends on the
threading), and a hypothesis profile: few examples, no deadline, derandomized so a CI run is
reproducible (`HYPOTHESIS_PROFILE=explore` searches 200 fresh random examples per property)."""

import os

import torch
from hypothesis import settings

torch.set_num_threads(int(os.environ.get("LATENTGRAD_TEST_THREADS", "1")))

settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
