"""Orientation constants shared by the volume readers, the DICOM reader and the transforms (one home)."""

import numpy as np

#: DICOM's patient axes (LPS) to NIfTI's (RAS): negate x and y
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Orientation codes whose axial slices are already in the display layout: orienting a volume to "PLS" gives
#: ``volume[h, w, z] == ras_axial_to_display(ras_volume[..., z])[h, w]`` (rows run to posterior, columns to the
#: patient's left). Training, evaluation, inference and ``segment`` all bring volumes to this orientation, so the
#: network sees the same in-plane layout everywhere, and MONAI's ``Invertd`` undoes it exactly.
DISPLAY_AXCODES = "PLS"
