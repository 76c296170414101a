"""Quality control of a batch: review flags and their severity, the offline report.html."""
