"""Inference service: the two-stage CatBoost model that says whether serum B12 testing is warranted."""
