"""Labelled cases to training tensors: each image read once, in parallel, in the cases' order.

``load_dataset`` is what the retraining job and ``train-initial`` both call: the tensors, then
the split and manifest built from the same reads.

``tensors_for`` fetches every case's image (``retrain.images.fetch_image``: the edge
extractor's decoding, then resizing) on a thread pool, and returns the stacked images, the label
matrix and each study's content hash, which the data set manifest records
(``retrain.dataset.assemble``), so no file is read twice. Pydicom's parsing holds the GIL, but
file reads, HTTP and numpy/torch work release it, so a few threads still help.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from retrain.dataset import (
    Dataset,
    DatasetError,
    LabelledCase,
    LockedTestSet,
    assemble,
    check_locked,
)
from retrain.images import DicomWebSource, FetchedImage, ImageError, fetch_image


@dataclass(frozen=True)
class CaseTensors:
    """The images and labels of some cases, row ``i`` being ``study_keys[i]``."""

    study_keys: tuple[str, ...]
    images: Tensor
    """float32 ``[N, 1, S, S]`` in [0, 1]."""
    labels: Tensor
    """float32 ``[N, F]``, columns in the order of the findings asked for."""
    content_sha256: Mapping[str, str]
    """study_key -> SHA-256 of the decoded image (``retrain.images.content_sha256``)."""

    def select(self, study_keys: Iterable[str]) -> tuple[Tensor, Tensor]:
        """Images and labels of ``study_keys``, in that order."""
        row = {key: index for index, key in enumerate(self.study_keys)}
        try:
            rows = torch.tensor([row[key] for key in study_keys], dtype=torch.long)
        except KeyError as exc:
            raise DatasetError(f"study {str(exc.args[0])[:12]} is not among the cases") from None
        return self.images[rows], self.labels[rows]


def tensors_for(
    cases: Sequence[LabelledCase],
    findings: tuple[str, ...],
    size: int,
    *,
    workers: int = 4,
    dicomweb: DicomWebSource | None = None,
) -> CaseTensors:
    """Fetch, decode and resize the image of every case; rows follow ``cases``.

    Every case needs a ``dicom_uri`` and a label for every finding (:class:`DatasetError`
    otherwise, before any image is read). An unreadable image raises :class:`ImageError`
    naming the study by the start of its key.
    """
    labels = _label_matrix(cases, findings)
    uris = [_uri_of(case) for case in cases]

    def fetch(index: int) -> FetchedImage:
        try:
            return fetch_image(uris[index], size, dicomweb)
        except ImageError as exc:
            raise ImageError(f"study {cases[index].study_key[:12]}: {exc}") from exc

    images = np.empty((len(cases), 1, size, size), dtype=np.float32)
    hashes: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        # map yields in submission order, so rows follow the cases whatever finishes first.
        for index, fetched in enumerate(pool.map(fetch, range(len(cases)))):
            images[index, 0] = fetched.pixels
            hashes[cases[index].study_key] = fetched.content_sha256
    return CaseTensors(
        study_keys=tuple(case.study_key for case in cases),
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        content_sha256=hashes,
    )


@dataclass(frozen=True)
class TrainingData:
    """An assembled data set and the tensors of its studies."""

    dataset: Dataset
    tensors: CaseTensors

    def train_side(self) -> tuple[Tensor, Tensor]:
        return self.tensors.select(case.study_key for case in self.dataset.split.train)

    def validation_side(self) -> tuple[Tensor, Tensor]:
        return self.tensors.select(case.study_key for case in self.dataset.split.validation)


def load_dataset(
    cases: Sequence[LabelledCase],
    locked: LockedTestSet,
    findings: tuple[str, ...],
    size: int,
    *,
    seed: int,
    validation_share: float,
    workers: int = 4,
    dicomweb: DicomWebSource | None = None,
) -> TrainingData:
    """Read every usable case's image once (:func:`tensors_for`), then split the cases and
    describe them (``retrain.dataset.assemble``) with the content hashes of those reads.

    The locked test set is checked before any image is read; a split with an empty side raises
    :class:`DatasetError`. Cases without a ``dicom_uri`` are dropped and counted by ``assemble``.
    """
    usable = [case for case in cases if case.dicom_uri is not None]
    check_locked(usable, locked)
    tensors = tensors_for(usable, findings, size, workers=workers, dicomweb=dicomweb)
    uri_hash = {case.dicom_uri: tensors.content_sha256[case.study_key] for case in usable}
    dataset = assemble(
        cases,
        locked,
        seed=seed,
        content_sha256=lambda uri: uri_hash[uri],
        validation_share=validation_share,
    )
    if not dataset.split.train or not dataset.split.validation:
        raise DatasetError(
            "the split left the train or the validation side empty: more labelled studies "
            "are needed"
        )
    return TrainingData(dataset, tensors)


def _label_matrix(
    cases: Sequence[LabelledCase], findings: tuple[str, ...]
) -> npt.NDArray[np.float32]:
    if len({case.study_key for case in cases}) != len(cases):
        raise DatasetError("a study appears more than once among the cases")
    labels = np.empty((len(cases), len(findings)), dtype=np.float32)
    for row, case in enumerate(cases):
        missing = [finding for finding in findings if finding not in case.labels]
        if missing:
            raise DatasetError(f"study {case.study_key[:12]} has no label for {missing}")
        labels[row] = [case.labels[finding] for finding in findings]
    return labels


def _uri_of(case: LabelledCase) -> str:
    if case.dicom_uri is None:
        raise DatasetError(f"study {case.study_key[:12]} has no dicom_uri")
    return case.dicom_uri
