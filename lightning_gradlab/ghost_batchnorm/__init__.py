"""Ghost BatchNorm (Hoffer et al. 2017). Import-light: the manifest is read without importing torch."""
