"""Data pipeline: dataset base class, image conversion, image/mask ops, augmentation, targets, loader."""
