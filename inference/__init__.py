"""Inference: the product's predictor (``predictor.DepthPredictor``), domain prototypes and head
selection (``prototypes``, ``replay``), depth for image files (``images``), video streams
(``stream``) and export to TorchScript / ONNX (``export``)."""
