"""Continual learning: task sequences, experience replay and continual evaluation (De Lange et al. 2023)."""
