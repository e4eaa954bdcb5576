import sys, time, glob
import numpy as np, cv2, torch
from engine.coreset import _greedy_pruned, random_projection
from configs.settings import load_settings
from engine import Engine
root = sys.argv[1]; rate = 0.1
eng = Engine.from_settings(load_settings(require_cuda=False, image_size=224, backbone="efficientnet_lite0"))
files = sorted(glob.glob(root + "/train/good/*.png"))
imgs = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
f = eng.embed(imgs, eng.backbone(), 224)
x = torch.from_numpy(f.reshape(-1, f.shape[-1]))
z = random_projection(x, 128, 0).numpy()
k = int(len(z) * rate)
start = int(torch.randint(len(z), (1,), generator=torch.Generator().manual_seed(0)))
cands = []
import engine.coreset as ec
orig_flat = np.flatnonzero
def counting(a):
    out = orig_flat(a); cands.append(out.size); return out
ec.np.flatnonzero = counting
t = time.perf_counter(); a, ra = _greedy_pruned(z.copy(), k, start); tp = time.perf_counter() - t
c = np.array(cands)
print(f"pruned {tp:.1f}s r={ra:.4f} n={len(z)} k={k} candidates/step mean={c.mean():.0f} ({c.mean()/len(z):.1%} of n), by tenths of the run:", [f"{q.mean()/len(z):.1%}" for q in np.array_split(c, 10)], flush=True)
