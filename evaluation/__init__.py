"""Evaluation: how a prediction meets the ground truth, a test split and a checkpoint through the
product's predictor, the lifelong matrix with forgetting and backward transfer (``evaluate``)."""
