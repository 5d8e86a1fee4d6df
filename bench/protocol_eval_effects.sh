#!/bin/bash
# Evaluation-side differences on the quickstart model, one at a time (from the repository root).
CK=runs/quickstart/NKS.pth.tar
B="--checkpoint $CK --data-root datasets/synthetic --quiet --no-fast --batch-size 1"
A="--crop none --no-cap --aggregate pixel"   # the former --authors-eval
O=runs/proto_upstream/eval
mkdir -p $O
python test.py $B --json $O/ours.json > $O/ours.txt
python test.py $B $A --json $O/former.json > $O/former.txt
python test.py $B $A --full-frame kitti --json $O/full.json > $O/full.txt
python test.py $B $A --rmse weighted --json $O/rmse.json > $O/rmse.txt
python test.py $B $A --no-pred-clamp --json $O/clamp.json > $O/clamp.txt
python test.py $B $A --delta le --json $O/delta.json > $O/delta.txt
python test.py $B $A --scannet-resize once --json $O/scannet.json > $O/scannet.txt
python test.py $B --protocol authors --json $O/authors.json > $O/authors.txt
