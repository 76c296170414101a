"""From files to training patches: dataset listings (MSD / nnU-Net), the plan (spacing, patch, normalisation),
the MONAI transform chains and foreground sampling."""
