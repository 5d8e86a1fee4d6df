"""Evaluate a Lifelong-MonoDepth checkpoint with the domain prior (each domain through its own head).

    python test.py --checkpoint runs/NKS.pth.tar --data-root datasets
    python test.py --checkpoint NKS.pth.tar --order NKS            # an authors' file (no metadata)
    python test.py --matrix --order NKS --runs-dir runs            # domain x stage matrix, forgetting, BWT
    python test.py --crop none --no-cap --aggregate pixel          # the authors' own evaluation

Every learned domain (or the subset given by --domains) is evaluated on its test split
(``get_dataset(letter, "test", data_root, train=False, scale)``) with the head of that domain,
taken from the checkpoint's learning order. Predictions come from the product's inference path
(``inference.predictor.DepthPredictor``) and are scored by ``evaluation.evaluate.DomainEvaluator`` (bilinear
upsampling to the ground truth, optional caps and crops, per-image or per-pixel averaging).

``--matrix`` evaluates every stage checkpoint of a learning order (N, NK, NKS, or NK_<strategy>
... as named by ``base.domains.run_name``) on every domain learned so far and reports, per metric, the
domain x stage matrix, the final average, forgetting and backward transfer; the maths is the pure
function :func:`evaluation.evaluate.lifelong_summary`; the command itself is cli/test.py.
"""
from cli.test import main

if __name__ == "__main__":
    main()
