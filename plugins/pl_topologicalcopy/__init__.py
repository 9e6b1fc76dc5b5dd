"""pl-topologicalcopy: a ts plugin joining the outputs of several parent instances."""
