"""Smoke test of a built distribution, run by ``make package-check`` inside a clean virtual
environment where only torch and the wheel are installed (not collected by pytest).

    python tests/package_smoke.py DIST_DIR
"""

from __future__ import annotations

import sys
import tarfile
import zipfile
from importlib import metadata, resources
from pathlib import Path

import torch

import latentgrad


def main(dist_dir: Path) -> None:
    where = Path(latentgrad.__file__).resolve()
    assert "site-packages" in where.parts, f"latentgrad imported from {where}, not the wheel"
    assert metadata.version("latentgrad") == latentgrad.__version__
    assert resources.files("latentgrad").joinpath("py.typed").is_file()

    (wheel,) = dist_dir.glob("latentgrad-*.whl")
    (sdist,) = dist_dir.glob("latentgrad-*.tar.gz")
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
    assert any(n.endswith("licenses/LICENSE") for n in names), "wheel lacks LICENSE"
    configs = [n for n in names if n.startswith("latentgrad/experiments/configs/")]
    assert configs, "wheel lacks the experiment configs"
    with tarfile.open(sdist) as tar:
        members = tar.getnames()
    for required in ("LICENSE", "README.md", "pyproject.toml"):
        assert any(m.endswith("/" + required) for m in members), f"sdist lacks {required}"

    x = torch.tensor([[2.0, 1.0, -1.0]], requires_grad=True)
    p = latentgrad.sparsemax(x)
    torch.testing.assert_close(p, torch.tensor([[1.0, 0.0, 0.0]]))
    p[0, 0].backward()
    assert torch.isfinite(x.grad).all()
    print(f"package check: latentgrad {latentgrad.__version__}, {wheel.name}, {sdist.name}: ok")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
