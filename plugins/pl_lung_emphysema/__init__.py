"""pl-lung-emphysema: lung segmentation and %LAA-950 from a chest CT (a ds plugin)."""
