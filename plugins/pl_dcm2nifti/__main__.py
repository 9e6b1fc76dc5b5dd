"""``python -m pl_dcm2nifti``: the same as its console script."""

from pl_dcm2nifti.app import main

main()
