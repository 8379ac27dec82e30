"""Dataset folders as distributed -> MONAI datalists with the papers' splits.

``get_dataset(name).datalists(root)`` gives ``{"train": [...], "validation": [...], "test": [...]}``;
``check(root)`` reports counts, label values and problems (``python -m common data check``).
"""

from common.data.base import CheckReport, DatasetLayoutError, DatasetReader, SampleError
from common.data.registry import UnknownDatasetError, dataset_names, get_dataset
from common.data.splits import SPLIT_NAMES, SplitFileError, fraction_split, read_splits, write_splits

__all__ = [
    "SPLIT_NAMES",
    "CheckReport",
    "DatasetLayoutError",
    "DatasetReader",
    "SampleError",
    "SplitFileError",
    "UnknownDatasetError",
    "dataset_names",
    "fraction_split",
    "get_dataset",
    "read_splits",
    "write_splits",
]
