"""Images, labels and class counts: data sources, long-tailed subsets, samplers, loaders."""

from bbn.data import catalog  # noqa: F401  (registers every data source: the one place)
