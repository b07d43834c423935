"""Sample metrics on 10,000 × 64 samples: ppgen.evaluate against torchmetrics.

* Fréchet distance: ``ppgen.evaluate.frechet_distance`` against torchmetrics'
  ``FrechetInceptionDistance`` with an identity feature map (``update`` both sets + ``compute``),
  both float64; the values must agree.
* MMD²: the unbiased statistic with the KID polynomial kernel (x·y/d + 1)³ over all points,
  ``mmd_test(kernel="polynomial", num_permutations=1)``, against torchmetrics'
  ``KernelInceptionDistance(subsets=1, subset_size=n)`` (the same statistic: one subset of
  every point); the values must agree. For reference also KID's default estimate (100 subsets
  of 1,000, a different, cheaper estimator) and ppgen's full permutation test (Gaussian
  kernel, median heuristic, 200 permutations), which torchmetrics does not offer.

    .venv/bin/python benchmarks/bench_evaluate.py [--quick] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch

from ppgen.evaluate import frechet_distance, mmd_test


class Identity(torch.nn.Module):
    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def timed(function, repeats: int) -> tuple[float, object]:
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 × 64 samples")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and BLAS threads (default: library defaults)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(options.threads)
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    num, dim = (2_000, 64) if options.quick else (10_000, 64)
    rng = np.random.default_rng(0)
    real = rng.normal(size=(num, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim)
    fake = 0.9 * rng.standard_t(6, size=(num, dim)) @ rng.normal(size=(dim, dim)) / np.sqrt(dim) + 0.05
    real_t, fake_t = torch.as_tensor(real), torch.as_tensor(fake)

    def torchmetrics_fid():
        metric = FrechetInceptionDistance(feature=Identity(dim), normalize=True)
        metric.update(real_t, real=True)
        metric.update(fake_t, real=False)
        return float(metric.compute())

    def torchmetrics_kid(subsets: int, subset_size: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "will save all extracted features in buffer"
            metric = KernelInceptionDistance(feature=Identity(dim), subsets=subsets, subset_size=subset_size, normalize=True)
        metric.update(real_t, real=True)
        metric.update(fake_t, real=False)
        return float(metric.compute()[0])

    rows = []
    ours, ours_value = timed(lambda: frechet_distance(real, fake), options.repeats)
    anchor, anchor_value = timed(torchmetrics_fid, options.repeats)
    rows.append(("Fréchet distance", ours, ours_value, "FID, identity features", anchor, anchor_value))
    ours, ours_value = timed(lambda: mmd_test(real, fake, kernel="polynomial", num_permutations=1).statistic, options.repeats)
    anchor, anchor_value = timed(lambda: torchmetrics_kid(1, num), options.repeats)
    rows.append(("MMD², polynomial kernel, all points", ours, ours_value, "KID, 1 subset of n", anchor, anchor_value))
    anchor, anchor_value = timed(lambda: torchmetrics_kid(100, 1000), options.repeats)
    rows.append(("—", float("nan"), float("nan"), "KID default, 100 subsets of 1,000", anchor, anchor_value))
    ours, ours_value = timed(lambda: mmd_test(real, fake, num_permutations=200).p_value, 1)
    rows.append(("MMD test, Gaussian kernel, 200 permutations (p-value)", ours, ours_value, "—", float("nan"), float("nan")))

    print(f"n = {num} per set, d = {dim}, torch threads = {torch.get_num_threads()}, medians of {options.repeats}")
    print("| quantity | ppgen | value | torchmetrics | value | ratio |")
    print("|---|---|---|---|---|---|")
    for name, ours, ours_value, anchor_name, anchor, anchor_value in rows:
        ratio = ours / anchor if np.isfinite(ours) and np.isfinite(anchor) else float("nan")
        print(f"| {name} | {ours * 1e3:.0f} ms | {ours_value:.6g} | {anchor_name}: {anchor * 1e3:.0f} ms | {anchor_value:.6g} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
