import sys, time
import numpy as np
sys.path.insert(0, "/tmp/lazy")
from lazy import greedy_lazy
from engine.coreset import _greedy_pruned
rng = np.random.default_rng(0)
n, k = int(sys.argv[1]), int(sys.argv[2])
kind = sys.argv[3]
if kind == "gauss":
    z = rng.standard_normal((n, 128)).astype(np.float32)
else:  # clustered
    cent = rng.standard_normal((50, 128)).astype(np.float32) * 5
    z = (cent[rng.integers(0, 50, n)] + rng.standard_normal((n, 128)).astype(np.float32) * 0.5).astype(np.float32)
t = time.perf_counter(); a, ra = _greedy_pruned(z.copy(), k, 0); tp = time.perf_counter() - t
t = time.perf_counter(); b, rb, pops = greedy_lazy(z.copy(), k, 0); tl = time.perf_counter() - t
print(kind, n, k, f"pruned {tp:.2f}s r={ra:.4f}", f"lazy {tl:.2f}s r={rb:.4f} pops/step={pops/k:.1f}", "same" if np.array_equal(a, b) else f"differ at {np.argmax(a!=b)}")
