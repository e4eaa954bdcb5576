import heapq
import numpy as np

def greedy_lazy(z, k, start):
    """Exact greedy k-center with lazy (stale upper-bound) distances in a max-heap."""
    z = np.ascontiguousarray(z, dtype=np.float32)
    n, d = z.shape
    z_sq = np.einsum("ij,ij->i", z, z)
    r = np.sqrt(np.maximum(z_sq + z_sq[start] - 2.0 * (z @ z[start]), 0.0)).astype(np.float32)
    last = np.ones(n, dtype=np.int64)  # centres each row's r has seen
    centres = np.empty((k + 1, d), dtype=np.float32)
    csq = np.empty(k + 1, dtype=np.float32)
    centres[0], csq[0] = z[start], z_sq[start]
    chosen = np.zeros(n, dtype=bool)
    chosen[start] = True
    heap = [(-float(v), i) for i, v in enumerate(r)]
    heapq.heapify(heap)
    picked = [start]
    pops = 0
    m = 1
    def top():
        nonlocal pops
        while True:
            negr, x = heapq.heappop(heap)
            pops += 1
            if chosen[x]:
                continue
            if last[x] < m:
                c = centres[last[x]:m]
                dd = np.sqrt(max(float((csq[last[x]:m] + z_sq[x] - 2.0 * (c @ z[x])).min()), 0.0))
                if dd < r[x]:
                    r[x] = dd
                last[x] = m
                if heap and r[x] < -heap[0][0]:
                    heapq.heappush(heap, (-float(r[x]), x))
                    continue
            return x
    for _ in range(k - 1):
        x = top()
        chosen[x] = True
        picked.append(x)
        centres[m], csq[m] = z[x], z_sq[x]
        m += 1
    x = top()
    radius = float(r[x])
    return np.array(picked), radius, pops
