"""01 data: sources, synthetic generator, image reading, cache, splits, loader, augmentation, EDA."""
