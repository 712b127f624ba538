"""AdaB²N (Lyu et al. 2023). Import-light: the manifest is read without importing torch."""
