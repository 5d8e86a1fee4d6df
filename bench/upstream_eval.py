"""Run the authors' released evaluation (shared/reference/upstream test.py's `test`, util.py, their
loaders and model) on CPU, per PATCHES.md, on an authors'-format three-domain file.

    UPSTREAM=/path/to/Lifelong-MonoDepth python bench/upstream_eval.py CHECKPOINT DATA_ROOT OUT.json [ENCODER]

(UPSTREAM: a checkout of the released code with the import patches of its PATCHES.md; here
shared/reference/upstream.) Not part of the project or its tests: a tool to compare against.

Patches (runtime only, nothing in the reference is edited): _stubs first on sys.path, .cuda()
no-ops, F.upsample = F.interpolate, DataLoader workers 0, and the KITTI test loader's random PCA
Lighting noise switched off (a bug of theirs that makes evaluation random; the project does not
reproduce it). Run from any folder: it builds ./datasets with links to DATA_ROOT (kitti -> DATA_ROOT).
"""
import argparse, contextlib, io, json, os, sys, ast

_parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
_parser.add_argument("checkpoint", help="an authors'-format three-domain checkpoint (N, K, S heads)")
_parser.add_argument("data_root", help="the data root whose index CSVs and images the authors' loaders read")
_parser.add_argument("out_json", help="where the authors' metrics per domain are written (JSON)")
_parser.add_argument("encoder", nargs="?", default="resnet34", help="the checkpoint's encoder (default resnet34)")
_cli = _parser.parse_args()

import torch, torch.nn as nn, torch.nn.functional as F  # noqa: E402 (after --help, which needs no torch)

UP = os.path.abspath(os.environ.get("UPSTREAM", "../shared/reference/upstream"))
ckpt, data_root, out_path = (os.path.abspath(a) for a in (_cli.checkpoint, _cli.data_root, _cli.out_json))
encoder = _cli.encoder
work = os.path.join(os.path.dirname(out_path), "upstream_work")
os.makedirs(os.path.join(work, "datasets"), exist_ok=True)
for name in os.listdir(data_root):
    link = os.path.join(work, "datasets", name)
    if not os.path.lexists(link):
        os.symlink(os.path.join(data_root, name), link)
if not os.path.lexists(os.path.join(work, "datasets", "kitti")):
    os.symlink(data_root, os.path.join(work, "datasets", "kitti"))
os.chdir(work)
sys.path[:0] = [os.path.join(UP, "_stubs"), UP]
for mod in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
    del sys.modules[mod]
nn.Module.cuda = lambda self, *a, **k: self
torch.Tensor.cuda = lambda self, *a, **k: self
F.upsample = F.interpolate
import torch.utils.data as tud
_DL = tud.DataLoader
class _DL0(_DL):
    def __init__(self, *a, **k):
        k["num_workers"] = 0
        super().__init__(*a, **k)
import loaddata_nyu, loaddata_kitti, loaddata_scannet, kitti_transform
for m in (loaddata_nyu, loaddata_kitti, loaddata_scannet):
    m.DataLoader = _DL0
kitti_transform.Lighting.__call__ = lambda self, sample: sample
import importlib.util
spec = importlib.util.spec_from_file_location("upstream_test", os.path.join(UP, "test.py"))
up = importlib.util.module_from_spec(spec); spec.loader.exec_module(up)
from models import modules, net, resnet
torch.set_num_threads(2)
enc = modules.E_resnet(getattr(resnet, encoder)(pretrained=False))
backbone = net.backbone(enc, num_features=512, block_channel=[64, 128, 256, 512])
model = net.model_ll(backbone, num_tasks=3, block_channel=[64, 128, 256, 512])
model.load_state_dict(torch.load(ckpt, map_location="cpu")["state_dict"])
results = {}
for letter, task, loader in (("N", 0, loaddata_nyu.getTestingData(1)),
                             ("K", 1, loaddata_kitti.getTestingData(1)),
                             ("S", 2, loaddata_scannet.getTestingData(1))):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        up.test(loader, model, task)
    results[letter] = ast.literal_eval(buf.getvalue().strip().splitlines()[-1])
    print(letter, results[letter], flush=True)
json.dump(results, open(out_path, "w"), indent=2)
