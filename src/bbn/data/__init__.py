"""Images, labels and class counts: sources, long-tail subsets, samplers, loader, augmentation."""
