"""pl-dcm2nifti: DICOM series to NIfTI volumes with JSON sidecars (a ds plugin)."""
