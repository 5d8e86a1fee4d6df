#!/bin/bash
# One short reduced run per training-side difference: one seed, resnet18, --scale 0.25, synthetic
# data (datasets/synthetic), a shared first stage N (60 steps), then NK and NKS 20 steps each,
# batch 8, replay 40 images per old domain (5 batches: the authors' replay ends after step 5).
# Usage (repository root): bash bench/protocol_effects.sh VARIANT "OPTIONS" [own-N]  (writes runs/proto_effects/VARIANT)
set -e
V=$1; X=$2
R=runs/proto_effects/$V
C="--data-root datasets/synthetic --scale 0.25 --encoder resnet18 --lr 3e-4 --val-images 8 --replay-size 40 --workers 0 --quiet --seed 0 --runs-dir $R --overwrite"
mkdir -p $R
if [ "$3" = "own-N" ]; then
  python train_N.py $C --max-steps 60 $X
elif [ "$V" != "base" ]; then
  cp runs/proto_effects/base/N.pth.tar $R/N.pth.tar
fi
python train_NK.py $C --max-steps 20 --batch-size 8 $X
python train_NKS.py $C --max-steps 20 --batch-size 8 $X
python test.py --matrix --checkpoint $R/NKS.pth.tar --data-root datasets/synthetic --quiet --no-fast --json $R/matrix.json > $R/matrix.txt
python test_inference.py --checkpoint $R/NKS.pth.tar --data-root datasets/synthetic --quiet --no-fast --latency-runs 0 --json $R/inference.json > $R/inference.txt
