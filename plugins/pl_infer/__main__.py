"""``python -m pl_infer``: the same as the console script ``infer``."""

from pl_infer.app import main

main()
