"""Signaling-game data: concept features and the game sampler.

A split is a ``ConceptFeatures``: item feature rows ``(N, F)``, L2-normalised per item and sorted
by concept, with ``offsets``/``counts`` ``(C,)`` locating each concept's items. Two sources:

- ``synthetic_concepts``: an offline stand-in for the image features. Each of C concepts belongs to
  one of G groups (uniform); group centres ``a_g ~ N(0, I_F)``, prototypes ``m_c = a_g(c) +
  prototype_noise · N(0, I_F)``, items ``x = ReLU(m_c + item_noise · N(0, I_F))``, L2-normalised.
  Train and test items are independent draws from the same prototypes. Difficulty knobs: more
  ``item_noise`` blurs concepts; less ``prototype_noise`` (or fewer groups) makes same-group
  distractors harder to tell apart.
- ``load_lazaridou``: the original VGG fc features of Lazaridou et al. 2017 as redistributed with
  DianeBouchacourt/SignalingGame: per split folder (``train``, ``test``) the HDF5 file
  ``ours_images_single_sm0.h5`` (one dataset of 4096-d rows) and the pickled label list
  ``ours_images_single_sm0.objects`` (one concept label per row). Needs ``h5py``.

``sample_games`` draws games as the original code does, for both sources: ``game_size`` distinct
concepts uniformly without replacement, one item of each uniformly; the first is the target (the
sender's input); the receiver sees the items in a uniformly random order and the label is the
target's position there.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from latentgrad.experiments.data.files import DataError, require_file, verify_checksums

FEATURES_FILE = "ours_images_single_sm0.h5"
LABELS_FILE = "ours_images_single_sm0.objects"
SPLITS = ("train", "test")


@dataclass
class ConceptFeatures:
    """Items of one split, sorted by concept.

    features: ``(N, F)`` float32, unit L2 norm per row.
    offsets, counts: ``(C,)`` long; concept ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``.
    """

    features: Tensor
    offsets: Tensor
    counts: Tensor

    @property
    def num_concepts(self) -> int:
        return int(self.counts.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @classmethod
    def from_labels(cls, features: Tensor, labels: Tensor) -> ConceptFeatures:
        """Group rows ``features`` ``(N, F)`` by integer ``labels`` ``(N,)`` (any ids) and
        L2-normalise them."""
        if features.dim() != 2 or labels.shape != features.shape[:1]:
            raise ValueError(
                f"features must be (N, F) and labels (N,), got {tuple(features.shape)} and "
                f"{tuple(labels.shape)}"
            )
        _, concept = torch.unique(labels, return_inverse=True)
        order = torch.argsort(concept, stable=True)
        counts = torch.bincount(concept)
        offsets = torch.cumsum(counts, 0) - counts
        return cls(l2_normalise(features[order].float()), offsets, counts)


def l2_normalise(x: Tensor) -> Tensor:
    """Rows of ``x`` ``(N, F)`` divided by their L2 norm; an all-zero row is a ValueError."""
    norm = x.norm(dim=1, keepdim=True)
    if bool((norm == 0).any()):
        raise ValueError("features has an all-zero row, which cannot be L2-normalised")
    return x / norm


def synthetic_concepts(
    num_concepts: int = 463,
    items_per_concept: int = 100,
    dim: int = 4096,
    num_groups: int = 24,
    prototype_noise: float = 0.8,
    item_noise: float = 0.6,
    seed: int = 0,
) -> tuple[ConceptFeatures, ConceptFeatures]:
    """Train and test splits of the offline generator (see the module docstring); seeded by ``seed``
    alone, so the data never depends on the training seed."""
    for name, value in (
        ("num_concepts", num_concepts),
        ("items_per_concept", items_per_concept),
        ("dim", dim),
        ("num_groups", num_groups),
    ):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if prototype_noise < 0 or item_noise <= 0:
        raise ValueError(
            f"prototype_noise must be >= 0 and item_noise > 0, got {prototype_noise}, {item_noise}"
        )
    gen = torch.Generator().manual_seed(seed)
    group = torch.randint(num_groups, (num_concepts,), generator=gen)
    centres = torch.randn(num_groups, dim, generator=gen)
    prototypes = centres[group] + prototype_noise * torch.randn(num_concepts, dim, generator=gen)
    counts = torch.full((num_concepts,), items_per_concept, dtype=torch.long)
    offsets = torch.arange(num_concepts) * items_per_concept

    def items() -> ConceptFeatures:
        noise = torch.randn(num_concepts, items_per_concept, dim, generator=gen)
        x = torch.relu(prototypes.unsqueeze(1) + item_noise * noise).flatten(0, 1)
        # a ReLU can zero a whole row only with negligible probability; nudge it to stay valid
        x[:, 0] += (x.norm(dim=1) == 0).float()
        return ConceptFeatures(l2_normalise(x), offsets, counts)

    return items(), items()


def load_lazaridou(root: str | Path) -> tuple[ConceptFeatures, ConceptFeatures]:
    """Train and test splits from ``root/{train,test}/`` in the original layout (module docstring).

    The label lists are Python pickles: load only files you trust. Before anything is read, every
    file is checked against the ``SHA256SUMS`` files in ``root`` and its split folders (DataError
    naming a mismatched file). Raises FileNotFoundError naming a missing file, and ImportError
    asking for ``pip install h5py`` when it is absent.
    """
    root = Path(root).expanduser()
    files = [
        (
            require_file(root / split, FEATURES_FILE, "signal_game features",
                         f"signal_game/{split}"),
            require_file(root / split, LABELS_FILE, "signal_game features",
                         f"signal_game/{split}"),
        )
        for split in SPLITS
    ]
    verify_checksums([file for pair in files for file in pair], root)
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"reading the signaling-game features {root / 'train' / FEATURES_FILE} needs the "
            "h5py package, which is not installed: run `pip install h5py` (or use the synthetic "
            "features: data.source=synthetic)"
        ) from err
    splits = []
    for features_file, labels_file in files:
        with h5py.File(features_file, "r") as fh:
            keys = list(fh.keys())
            if len(keys) != 1:
                raise DataError(f"{features_file}: expected one dataset, found {keys}")
            features = torch.as_tensor(fh[keys[0]][()], dtype=torch.float32)
        if features.dim() != 2:
            raise DataError(f"{features_file}: expected a (N, F) matrix of features, got shape "
                            f"{tuple(features.shape)}")
        with open(labels_file, "rb") as fh:
            try:
                labels = list(pickle.load(fh, encoding="latin1"))
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
                raise DataError(f"{labels_file}: not a pickled list of labels ({err})") from None
        if len(labels) != features.shape[0]:
            raise DataError(
                f"{labels_file}: {len(labels)} labels for {features.shape[0]} feature rows"
            )
        ids = {label: i for i, label in enumerate(dict.fromkeys(labels))}
        label_ids = torch.tensor([ids[label] for label in labels], dtype=torch.long)
        splits.append(ConceptFeatures.from_labels(features, label_ids))
    return splits[0], splits[1]


@dataclass
class Games:
    """Item indices of ``n`` games of size ``G``.

    sender: ``(n,)`` the target item (the sender's input).
    candidates: ``(n, G)`` the items in the order the receiver sees them.
    label: ``(n,)`` the target's position in ``candidates``.
    """

    sender: Tensor
    candidates: Tensor
    label: Tensor


def sample_games(
    data: ConceptFeatures, n: int, game_size: int, generator: torch.Generator
) -> Games:
    """``n`` games of ``game_size`` distinct concepts, all drawn at once."""
    if game_size < 2 or game_size > data.num_concepts:
        raise ValueError(
            f"game_size must be in [2, {data.num_concepts}] (the number of concepts), "
            f"got {game_size}"
        )
    weights = torch.ones(n, data.num_concepts)
    concepts = torch.multinomial(weights, game_size, replacement=False, generator=generator)
    u = torch.rand(n, game_size, generator=generator)
    within = (u * data.counts[concepts]).long().clamp(max=data.counts[concepts] - 1)
    items = data.offsets[concepts] + within
    order = torch.rand(n, game_size, generator=generator).argsort(dim=1)
    label = order.argsort(dim=1)[:, 0]
    return Games(items[:, 0], items.gather(1, order), label)


class GameBatches(torch.utils.data.Dataset):
    """Batches of games with their features: item ``i`` is batch ``i`` as a tuple
    ``(sender (B, F), candidates (B, G, F), label (B,))`` (use ``DataLoader(batch_size=None)``)."""

    def __init__(self, data: ConceptFeatures, games: Games, batch_size: int) -> None:
        self.data = data
        self.games = games
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-self.games.label.shape[0] // self.batch_size)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        x = self.data.features
        return x[self.games.sender[sl]], x[self.games.candidates[sl]], self.games.label[sl]
