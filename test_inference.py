"""Evaluate a Lifelong-MonoDepth checkpoint WITHOUT the domain prior: each image goes to the head of
the nearest stored domain prototype.

    python test_inference.py --checkpoint runs/NKS.pth.tar --data-root datasets
    python test_inference.py --checkpoint NKS.pth.tar --order NKS --replay-root datasets   # authors' file
    python test_inference.py --selector map --latency-size 228x304
    python test_inference.py --checkpoint runs/NKS.pth.tar --data-root datasets --selection-benchmark
    python test_inference.py --checkpoint NKS.pth.tar --order NKS --protocol authors --replay-root datasets

Reports, per test domain: the selection accuracy and a confusion matrix (rows = true test domain,
columns = chosen head); the metric table with the selected heads next to the table with the domain
prior (the same images, the same evaluation conventions as test.py); and the latency per image
(batch size 1, median after warm-up) of the product's path -- ``DepthPredictor.predict`` with
``domain=None`` and ``with_uncertainty=False``: trunk, prototype selection and one head -- with the
frames per second it implies. Everything is also written as JSON.

Selectors (inference/prototypes.py): ``lda`` (the default where the checkpoint stores its statistics, else
``pooled``), ``pooled``, ``map`` and ``authors`` (the released code's rule, computed from replay
rows under the training augmentation). ``--selection-benchmark`` scores every selector on every
test image under several conditions (crop, whole frame, flipped, brighter, darker) instead.

Checkpoints written by the training scripts store prototypes. An authors' file has none: give
``--replay-root DIR`` to compute them from that root's replay rows (the same rule as training:
the replay CSV's images with the deterministic test transform, ``--proto-images`` per domain).
"""
from cli.test_inference import main

if __name__ == "__main__":
    main()
