"""Files in and out, shared by every task: suffixes, volume and picture readers, DICOM series, the NIfTI writer,
DICOM-SEG and atomic writes."""
