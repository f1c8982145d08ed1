r"""Real sequence data sets that packages ship, loaded offline by the packages' own loaders.

Each loader returns a :class:`Dataset` of numpy arrays (batch-major, as
:func:`rnnlab.tasks.from_arrays` takes them); ``dataset.task()`` is the
:class:`rnnlab.tasks.Task` that :mod:`rnnlab.train` trains on::

    ds = rnnlab.datasets.load("mnist1d")
    ds.x.shape, ds.x_test.shape          # (4000, 40, 1) (1000, 40, 1)
    task = ds.task()                     # evaluates on the 1000 test sequences

The loaders need the optional extra ``pip install -e ".[data]"`` (``mnist1d``,
``scikit-learn``, ``aeon``); none of them downloads anything:

- ``mnist1d``, ``mnist1d-shuffled``: MNIST-1D built procedurally by
  ``mnist1d.data.make_dataset`` with the paper's default arguments (4000/1000
  sequences of 40 steps, 10 classes); the shuffled variant is the package's
  own ``shuffle_seq=True`` (one fixed permutation of the 40 positions).
- ``digits``, ``digits-permuted``: scikit-learn's ``load_digits`` (1797 8×8
  images) read pixel by pixel, T = 64, split 75/25 stratified; the permuted
  variant applies :func:`pixel_permutation` (fixed, seeded) to every image.
- ``japanese-vowels``: the UEA archive's Japanese Vowels, shipped inside aeon
  (``aeon.datasets.load_classification``): 270/370 utterances of 7-29 steps, 12
  features (LPC cepstra), 9 speakers; right-padded, with ``lengths``.

Preprocessing is stated per loader; statistics come from the training split only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from rnnlab.tasks import Task, from_arrays, pad_sequences


class Dataset(NamedTuple):
    """A classification data set as arrays, batch-major.

    Attributes:
      name: the :func:`load` key.
      x: ``[N, T, F]`` float32 training inputs (right-padded when ``lengths`` is set).
      y: ``[N]`` int32 labels in ``[0, num_classes)``.
      x_test: ``[N_test, T_test, F]`` float32 held-out inputs.
      y_test: ``[N_test]`` int32.
      num_classes: the number of classes.
      lengths: ``[N]`` int32 valid lengths, or None (every sequence fills T).
      lengths_test: ``[N_test]`` int32, or None.
      description: one line: what the data is and how it was prepared.
      references: where it comes from.
      published: published test accuracies, ``{model: accuracy}`` (fractions),
        for tables beside ours; each key says whose model it was.
      permutation: ``[T]`` the fixed permutation of the time steps applied to
        every sequence (``x_perm = x[:, permutation]``), or None.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    lengths: np.ndarray | None = None
    lengths_test: np.ndarray | None = None
    description: str = ""
    references: str = ""
    published: dict | None = None
    permutation: np.ndarray | None = None

    def task(self) -> Task:
        """:func:`rnnlab.tasks.from_arrays` of these arrays (held-out split = test)."""
        return from_arrays(self.x, self.y, lengths=self.lengths, x_test=self.x_test,
                           y_test=self.y_test, lengths_test=self.lengths_test,
                           num_classes=self.num_classes, name=self.name,
                           description=self.description, references=self.references)


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"rnnlab.datasets needs the package {package!r} for this data set; install the "
            f"optional extra: pip install -e \".[data]\" (or pip install {package})."
        ) from e


# ----------------------------------------------------------------------------- MNIST-1D


MNIST1D_PUBLISHED = {
    "logistic regression (Greydanus 2020)": 0.32,
    "MLP (Greydanus 2020)": 0.68,
    "CNN (Greydanus 2020)": 0.94,
    "GRU, 6 units, bidirectional, all steps -> linear (Greydanus 2020)": 0.91,
    "human expert (Greydanus 2020)": 0.96,
}
MNIST1D_SHUFFLED_PUBLISHED = {
    "logistic regression (Greydanus 2020)": 0.32,
    "MLP (Greydanus 2020)": 0.68,
    "CNN (Greydanus 2020)": 0.56,
    "GRU, 6 units, bidirectional, all steps -> linear (Greydanus 2020)": 0.57,
}


def mnist1d(*, shuffled: bool = False, num_samples: int = 5000, seed: int = 42) -> Dataset:
    """MNIST-1D (Greydanus 2020), built by ``mnist1d.data.make_dataset``.

    The package's defaults (those of the paper): 5000 sequences of 40 steps,
    80/20 split (4000/1000), seed 42, standardised by the package (zero mean,
    unit standard deviation over the whole set). ``shuffled`` sets the package's
    ``shuffle_seq``: one fixed random permutation of the 40 positions, the same
    for every sequence, which removes the spatial order a convolution or a
    recurrence can use. One feature per step (``x [N, 40, 1]``).

    ``make_dataset`` seeds numpy's global generator; its state is restored
    afterwards, so loading changes no other numpy randomness.

    Args:
      shuffled: the spatially shuffled variant.
      num_samples: sequences in all (smaller values for quick tests; the
        published numbers are for 5000).
      seed: the package's seed (42 is the paper's).

    References:
      Greydanus, "Scaling down deep learning", arXiv:2011.14439, 2020.
    """
    data_module = _require("mnist1d.data", "mnist1d")
    args = data_module.get_dataset_args()
    args.num_samples, args.seed, args.shuffle_seq = num_samples, seed, shuffled
    state = np.random.get_state()
    try:
        data = data_module.make_dataset(args)
    finally:
        np.random.set_state(state)
    name = "mnist1d-shuffled" if shuffled else "mnist1d"
    return Dataset(
        name=name,
        x=np.asarray(data["x"], np.float32)[..., None],
        y=np.asarray(data["y"], np.int32),
        x_test=np.asarray(data["x_test"], np.float32)[..., None],
        y_test=np.asarray(data["y_test"], np.int32),
        num_classes=10,
        description=f"MNIST-1D{' (spatially shuffled)' if shuffled else ''}: 10 digit-like "
                    "templates, padded, translated, sheared, noised; 40 steps, 1 feature",
        references="Greydanus, Scaling down deep learning, arXiv:2011.14439, 2020",
        published=MNIST1D_SHUFFLED_PUBLISHED if shuffled else MNIST1D_PUBLISHED,
    )


# ----------------------------------------------------------------------------- 8x8 digits


def pixel_permutation(num_pixels: int = 64, seed: int = 0) -> np.ndarray:
    """The fixed permutation of the permuted digits: ``default_rng(seed).permutation``."""
    return np.random.default_rng(seed).permutation(num_pixels)


def digits(*, permuted: bool = False, permutation_seed: int = 0, test_size: float = 0.25,
           split_seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits read pixel by pixel (T = 64, 1 feature), optionally permuted.

    The small cousin of sequential and permuted MNIST (Le et al. 2015): each
    image is flattened row by row into 64 steps; the permuted variant reorders
    the 64 pixels of every image by one fixed permutation
    (:func:`pixel_permutation`; ``x_perm[:, t] = x[:, permutation[t]]``), so
    neighbouring pixels end up far apart in time. Pixels (0-16) are scaled to
    [0, 1] and standardised with the training split's mean and standard deviation.
    Split: ``sklearn.model_selection.train_test_split``, stratified, 75/25
    (1347/450) by default.

    References:
      Alpaydin & Kaynak, Optical Recognition of Handwritten Digits (UCI), 1998.
      Le, Jaitly & Hinton, arXiv:1504.00941, 2015 (pixel-by-pixel MNIST).
    """
    sk_datasets = _require("sklearn.datasets", "scikit-learn")
    model_selection = _require("sklearn.model_selection", "scikit-learn")
    raw = sk_datasets.load_digits()
    x = raw.images.reshape(len(raw.images), 64).astype(np.float32) / 16.0  # [N, 64]
    y = raw.target.astype(np.int32)
    perm = pixel_permutation(64, permutation_seed) if permuted else None
    if perm is not None:
        x = x[:, perm]
    x, x_test, y, y_test = model_selection.train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y)
    mean, std = x.mean(), x.std()
    return Dataset(
        name="digits-permuted" if permuted else "digits",
        x=((x - mean) / std)[..., None].astype(np.float32),
        y=y,
        x_test=((x_test - mean) / std)[..., None].astype(np.float32),
        y_test=y_test,
        num_classes=10,
        description=f"{'permuted' if permuted else 'sequential'} 8x8 digits (scikit-learn), "
                    "pixel by pixel: 64 steps, 1 feature",
        references="scikit-learn load_digits (UCI optdigits); Le et al. 2015 for the protocol",
        published={},
        permutation=perm,
    )


# ----------------------------------------------------------------------------- Japanese Vowels


# Quoted from memory of the UCI archive's description of the data set; not checked here
# against the paper (docs/data.md says so beside the table).
JAPANESE_VOWELS_PUBLISHED = {
    "passing-through regions (Kudo et al. 1999; unchecked)": 0.941,
}


def japanese_vowels() -> Dataset:
    """Japanese Vowels (UEA archive), read by ``aeon.datasets.load_classification``.

    Nine male speakers uttering /ae/: 12 LPC cepstrum coefficients per frame,
    7-29 frames per utterance; the archive's split, 270 training and 370 test
    utterances; the class is the speaker. The data ship inside aeon (no
    download). Sequences are right-padded to the longest of both splits (29)
    with ``lengths``; each feature is standardised with the mean and standard
    deviation of the training split's valid frames. Labels ``"1"``-``"9"``
    become 0-8.

    References:
      Kudo, Toyama & Shimbo, "Multidimensional curve classification using
      passing-through regions", Pattern Recognition Letters 20, 1999.
      Bagnall et al., "The UEA multivariate time series classification archive",
      arXiv:1811.00075, 2018.
    """
    aeon_datasets = _require("aeon.datasets", "aeon")
    X, y = aeon_datasets.load_classification("JapaneseVowels", split="train")
    Xt, yt = aeon_datasets.load_classification("JapaneseVowels", split="test")
    classes = np.unique(y)
    unknown = sorted(set(np.unique(yt).tolist()) - set(classes.tolist()))
    if unknown:
        raise ValueError(f"the test split holds labels absent from training: {unknown}.")
    seqs, seqs_test = [np.asarray(s).T for s in X], [np.asarray(s).T for s in Xt]  # [L, 12]
    length = max(s.shape[0] for s in seqs + seqs_test)
    x, lengths = pad_sequences(seqs, length=length)
    x_test, lengths_test = pad_sequences(seqs_test, length=length)
    frames = np.concatenate(seqs)  # the training split's valid frames
    mean, std = frames.mean(0), frames.std(0)
    valid = np.arange(length)[None, :, None] < lengths[:, None, None]
    valid_test = np.arange(length)[None, :, None] < lengths_test[:, None, None]
    return Dataset(
        name="japanese-vowels",
        x=np.where(valid, (x - mean) / std, 0.0).astype(np.float32),
        y=np.searchsorted(classes, y).astype(np.int32),
        x_test=np.where(valid_test, (x_test - mean) / std, 0.0).astype(np.float32),
        y_test=np.searchsorted(classes, yt).astype(np.int32),
        num_classes=len(classes),
        lengths=lengths,
        lengths_test=lengths_test,
        description="Japanese Vowels (UEA): 9 speakers, 12 LPC cepstra per frame, 7-29 frames",
        references="Kudo et al. 1999; UEA archive (Bagnall et al. 2018), via aeon",
        published=JAPANESE_VOWELS_PUBLISHED,
    )


# ----------------------------------------------------------------------------- registry


LOADERS: dict[str, Callable[[], Dataset]] = {
    "mnist1d": mnist1d,
    "mnist1d-shuffled": lambda: mnist1d(shuffled=True),
    "digits": digits,
    "digits-permuted": lambda: digits(permuted=True),
    "japanese-vowels": japanese_vowels,
}


def names() -> tuple[str, ...]:
    """The data sets :func:`load` knows."""
    return tuple(LOADERS)


def load(name: str) -> Dataset:
    """The data set ``name`` (one of :func:`names`) with its default arguments."""
    if name not in LOADERS:
        raise ValueError(f"name must be one of {names()}; received {name!r}.")
    return LOADERS[name]()
