"""Hospital networks: DICOMweb segmentation and the DICOM node (``listen``) with its safeguards."""
