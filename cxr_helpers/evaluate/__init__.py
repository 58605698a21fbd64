"""03 error analysis: metrics with CIs, calibration, thresholds, subgroups, robustness."""
