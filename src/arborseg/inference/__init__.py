"""Prediction: tiles, mergers, block-wise prediction of large volumes, fusion of ensemble members."""
