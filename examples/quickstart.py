"""Write a model, draw it, run two engines on it: the README example.

Run: python examples/quickstart.py [--num-data N] [--output FILE.png]
"""

import argparse

import numpy as np

import ppgen
from ppgen import dist, plate, sample


def coin(x=None, num_tosses=10, a=2.0, b=2.0):
    """rho ~ Beta(a, b); x_i ~ Bernoulli(rho)."""
    rho = sample("rho", dist.Beta(a, b))
    with plate("N", num_tosses if x is None else len(x)):
        sample("x", dist.Bernoulli(rho), obs=x)


def main(num_data: int = 30, output: str = "coin.png") -> None:
    x = (np.random.default_rng(0).random(num_data) < 0.7).astype(float)
    print(ppgen.inspect(coin, x).summary())
    ppgen.render(coin, x, distributions=True).render(output.removesuffix(".png"), format="png", cleanup=True)
    for engine in ("map", "mle"):
        result = ppgen.infer(coin, x, engine=engine)
        print(f"{engine}: rho = {float(result.params['rho']):.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-data", type=int, default=30)
    parser.add_argument("--output", default="coin.png")
    arguments = parser.parse_args()
    main(arguments.num_data, arguments.output)
