"""Stochastic block model, planted partition (N = 2000, K = 4): ppgen ``cavi`` against
scikit-learn ``SpectralClustering`` on the adjacency matrix.

Both get the graph's adjacency matrix and K. ppgen runs the SBM program
(``ppgen.models.graphs.stochastic_block_model``) through coordinate-ascent VI with its default
options: starts read from the program (spectral clustering of the pairs the memberships index),
up to four, stopping once two reach the same ELBO (``--given-init``: the first start is
``spectral_init`` passed by hand, as before the restarts existed); the time includes tracing
the program (``ppgen.inspect``), compiling it to its conjugate factor graph, the starts and the
sweeps. Reported: median wall time over repeats, the ratio ppgen ÷ scikit-learn, the
median split of ppgen's time, and the normalised mutual information of each partition with the
planted one.

Run: ``.venv/bin/python benchmarks/bench_sbm.py [--repeats 3] [--p-in 0.02] [--p-out 0.004] [--given-init]``
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--p-in", type=float, default=0.02)
    parser.add_argument("--p-out", type=float, default=0.004)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--given-init", action="store_true", help="pass init={'z': spectral_init} (the call before restarts)")
    args = parser.parse_args()

    from sklearn.cluster import SpectralClustering

    import ppgen
    from ppgen.models.graphs import normalized_mutual_information, planted_partition, spectral_init, stochastic_block_model, to_adjacency

    graph, truth = planted_partition(args.nodes, args.blocks, args.p_in, args.p_out, seed=0)
    adjacency = to_adjacency(graph)
    print(f"planted partition: N = {args.nodes}, K = {args.blocks}, p_in = {args.p_in}, p_out = {args.p_out}, "
          f"{int(adjacency.sum() / 2)} edges, mean degree {adjacency.sum(1).mean():.1f}")
    # warm both code paths once (imports, first-call costs), outside the timings
    SpectralClustering(args.blocks, affinity="precomputed", random_state=0).fit_predict(adjacency[:50, :50])
    ppgen.infer(stochastic_block_model, adjacency[:50, :50], K=args.blocks, engine="cavi", num_samples=1)

    sk_times, pp_times, sk_nmi, pp_nmi, sweeps = [], [], [], [], []
    split: dict[str, list[float]] = {"inspect": [], "compile": [], "starts": [], "sweeps": []}
    for repeat in range(args.repeats):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = SpectralClustering(args.blocks, affinity="precomputed", random_state=repeat).fit_predict(adjacency)
        sk_times.append(time.perf_counter() - start)
        sk_nmi.append(normalized_mutual_information(labels, truth))

        start = time.perf_counter()
        given = {"init": {"z": lambda adjacency, K: spectral_init(adjacency, K, seed=repeat)}} if args.given_init else {}
        result = ppgen.infer(stochastic_block_model, adjacency, K=args.blocks, engine="cavi", seed=repeat, num_samples=1, **given)
        pp_times.append(time.perf_counter() - start)
        pp_nmi.append(normalized_mutual_information(result.marginals["z"].argmax(-1), truth))
        sweeps.append(result.num_iterations)
        starts = len(result.diagnostics["restarts"]) if "restarts" in result.diagnostics else 1
        diagnostics = result.diagnostics
        split["inspect"].append(pp_times[-1] - result.seconds)  # infer's tracing and checks, before the engine runs
        split["compile"].append(diagnostics["compile_seconds"])
        split["starts"].append(diagnostics["init_seconds"])
        split["sweeps"].append(diagnostics["sweep_seconds"])
        print(f"repeat {repeat}: sklearn {sk_times[-1]:.2f} s (NMI {sk_nmi[-1]:.4f}); ppgen cavi {pp_times[-1]:.2f} s "
              f"({', '.join(f'{part} {times[-1]:.2f} s' for part, times in split.items())}; {starts} starts, {sweeps[-1]} sweeps "
              f"in the kept one, NMI {pp_nmi[-1]:.4f})")
    sk, pp = statistics.median(sk_times), statistics.median(pp_times)
    print(f"median wall time: sklearn SpectralClustering {sk:.2f} s, ppgen cavi {pp:.2f} s, ratio ppgen/sklearn {pp / sk:.2f}")
    print("median split of ppgen's time: " + ", ".join(f"{part} {statistics.median(times):.2f} s" for part, times in split.items()))
    print(f"median NMI: sklearn {statistics.median(sk_nmi):.4f}, ppgen {statistics.median(pp_nmi):.4f}")


if __name__ == "__main__":
    main()
