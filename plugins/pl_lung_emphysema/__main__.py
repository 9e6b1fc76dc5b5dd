"""``python -m pl_lung_emphysema``: the same as its console script."""

from pl_lung_emphysema.app import main

main()
