"""Recipes: one readable file per job, with setup / train / save_checkpoint."""
