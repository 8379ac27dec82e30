"""The third-party warnings that say nothing to our users, silenced one by one: the single list and its filter.

Every entry names one warning exactly: its category and its whole message (a regular expression anchored at both
ends), or for a log record its logger, level and whole message. Nothing else is hidden: our own warnings, every
other third-party warning and every error still show. :func:`quiet_third_party` installs the filters; importing
``common`` calls it (``common/__init__.py``), so the command line (``python -m common``), a bundle config run
(its components import ``common``) and the MONAI Label app get it before the first MONAI transform is built.

To add an entry, quote the message as the library prints it (``re.escape``), and say why it is noise.
"""

from __future__ import annotations

import logging
import re
import warnings

_ORIENTATION_LABELS = (
    "Current default value of argument `labels=(('L', 'R'), ('P', 'A'), ('I', 'S'))` was changed in version None "
    "from `labels=(('L', 'R'), ('P', 'A'), ('I', 'S'))` to `labels=None`. Default value changed to None meaning "
    "that the transform now uses the 'space' of a meta-tensor, if applicable, to determine appropriate axis labels."
)

#: (category, exact message) of each silenced warning
THIRD_PARTY_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    # MONAI builds its nvImageCodec DICOM reader with every LoadImage, GPU decoding or not; pydicom decodes ours
    (
        UserWarning,
        "NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully. "
        "Falling back to default pydicom decoders.",
    ),
    # MONAI announces a default it has not changed; our orientation transforms work on RAS-labelled arrays
    (FutureWarning, f"monai.transforms.spatial.dictionary Orientationd.__init__:labels: {_ORIENTATION_LABELS}"),
    (FutureWarning, f"monai.transforms.spatial.array Orientation.__init__:labels: {_ORIENTATION_LABELS}"),
)

#: (logger, level, exact message) of each silenced log record
THIRD_PARTY_LOG_RECORDS: tuple[tuple[str, int, str], ...] = (
    # the log twin of the nvImageCodec warning above
    (
        "monai.data.nvimgcodec_pydicom_plugin",
        logging.WARNING,
        "nvImageCodec is not available; skipping pydicom decoder plugin registration.",
    ),
)


class DropRecord(logging.Filter):
    """Drops the log records of one level whose message is exactly ``message``; passes every other record."""

    def __init__(self, level: int, message: str):
        super().__init__()
        self.level, self.message = level, message

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == self.level and record.getMessage() == self.message)


def quiet_third_party() -> None:
    """Install the filters for :data:`THIRD_PARTY_WARNINGS` and :data:`THIRD_PARTY_LOG_RECORDS` (idempotent)."""
    for category, message in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=f"{re.escape(message)}\\Z", category=category)
    for name, level, message in THIRD_PARTY_LOG_RECORDS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropRecord) and (f.level, f.message) == (level, message) for f in logger.filters):
            logger.addFilter(DropRecord(level, message))
