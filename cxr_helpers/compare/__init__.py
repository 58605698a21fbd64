"""06_compare: runs side by side, paired tests, seed ensembles."""
