"""Dataset names -> readers: ``get_dataset("busi")``."""

from __future__ import annotations

from common.data.acdc import ACDC
from common.data.base import DatasetReader
from common.data.busi import BUSI
from common.data.ham10000 import HAM10000
from common.data.nnunet import NnUNetRaw
from common.data.ph2 import PH2
from common.data.synapse import SynapseBTCV, SynapseTransUNet
from common.data.uwmgi import UWMadisonGI

_READERS: dict[str, type[DatasetReader]] = {
    reader.name: reader for reader in (SynapseTransUNet, SynapseBTCV, ACDC, BUSI, HAM10000, PH2, UWMadisonGI, NnUNetRaw)
}


class UnknownDatasetError(ValueError):
    """A dataset name that no reader handles; the message lists the valid names."""


def dataset_names() -> tuple[str, ...]:
    """Every registered dataset name."""
    return tuple(_READERS)


def get_dataset(name: str | DatasetReader, **options) -> DatasetReader:
    """A reader for dataset ``name`` (options such as ``root=``, ``seed=`` go to its constructor).

    A reader passed in is returned as it is, so functions can take either.
    """
    if isinstance(name, DatasetReader):
        return name
    if name not in _READERS:
        raise UnknownDatasetError(f"unknown dataset '{name}'; valid names: {', '.join(_READERS)}")
    return _READERS[name](**options)
