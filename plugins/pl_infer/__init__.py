"""pl-infer: a ds plugin that segments the lungs of CT volumes with a small PyTorch model."""
