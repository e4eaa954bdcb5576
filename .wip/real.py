import sys, time, glob
import numpy as np, cv2, torch
sys.path.insert(0, "/tmp/lazy")
from lazy import greedy_lazy
from engine.coreset import _greedy_pruned, random_projection
from configs.settings import load_settings
from engine import Engine
root = sys.argv[1]; rate = 0.1
eng = Engine.from_settings(load_settings(require_cuda=False, image_size=224, backbone="efficientnet_lite0"))
files = sorted(glob.glob(root + "/train/good/*.png"))
imgs = [cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files]
t = time.perf_counter()
f = eng.embed(imgs, eng.backbone(), 224)
print("embed", f.shape, round(time.perf_counter() - t, 1), "s", flush=True)
x = torch.from_numpy(f.reshape(-1, f.shape[-1]))
z = random_projection(x, 128, 0).numpy()
k = int(len(z) * rate)
start = int(torch.randint(len(z), (1,), generator=torch.Generator().manual_seed(0)))
t = time.perf_counter(); b, rb, pops = greedy_lazy(z.copy(), k, start); tl = time.perf_counter() - t
print(f"lazy {tl:.1f}s r={rb:.4f} pops/step={pops/k:.1f} n={len(z)} k={k}", flush=True)
if len(sys.argv) > 2:
    t = time.perf_counter(); a, ra = _greedy_pruned(z.copy(), k, start); tp = time.perf_counter() - t
    print(f"pruned {tp:.1f}s r={ra:.4f}", "same" if np.array_equal(a, b) else f"first diff at {np.argmax(a != b)}", flush=True)
