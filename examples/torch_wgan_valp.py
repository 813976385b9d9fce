"""WGAN-VALP on 2-D data with the torch front door, ``VALPModule``.

A generator learns 8 Gaussians; the critic's estimate E f(real) - E f(fake) on fixed evaluation
sets is printed next to the exact W1 between those sets (an optimal assignment), so you can see
the critic track the Wasserstein distance as the generator closes it, with VALP's statistics
of the last critic step (``VALPModule.stats``: real and fake batches together).

    python -m examples.torch_wgan_valp --steps 300     # or: python examples/torch_wgan_valp.py
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from valr_core.frontends.torch_module import VALPModule

if __package__:  # python -m examples.torch_wgan_valp, or imported
    from .common import eight_gaussians, exact_w1, parse_args, report
else:  # python examples/torch_wgan_valp.py: common.py is beside this file, on sys.path
    from common import eight_gaussians, exact_w1, parse_args, report


def mlp(n_in: int, n_out: int, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    args = parse_args(__doc__, argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    gen, critic = mlp(2, 2), mlp(2, 1)
    # Radii matched to the data's scale (the paper's eps up to 10 suit [-1, 1] images, not this).
    valp = VALPModule(mode="al", rho=args.rho, xi=1.0, eps_min=args.eps_min, eps_max=args.eps_max, seed=args.seed)
    opt_g = torch.optim.Adam(gen.parameters(), lr=args.lr_gen, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(critic.parameters(), lr=args.lr_critic, betas=(0.5, 0.9))
    real_eval, z_eval = torch.from_numpy(eight_gaussians(rng, 512)), torch.randn(512, 2)

    history: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        with torch.no_grad():
            fake = gen(z_eval)
            estimate = float(critic(real_eval).mean() - critic(fake).mean())
        # valp.stats: the last critic step's calls; "valp/mu" the multiplier after its update.
        history.append(report(step, estimate, exact_w1(real_eval.numpy(), fake.numpy()), {**valp.stats, "valp/mu": valp.mu}))

    evaluate(0)
    for step in range(1, args.steps + 1):
        for _ in range(args.n_critic):
            real = torch.from_numpy(eight_gaussians(rng, args.batch))
            with torch.no_grad():
                fake = gen(torch.randn(args.batch, 2))
            x = torch.cat([real, fake])
            fx = critic(x)  # one pass on both: VALP reuses it (several calls per step work too)
            loss_d = fx[args.batch:].mean() - fx[: args.batch].mean() + valp(critic, x, fx=fx)
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            valp.step()  # mu <- max(0, mu + rho * mean violation)
        loss_g = -critic(gen(torch.randn(args.batch, 2))).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        if step % args.eval_every == 0 or step == args.steps:
            evaluate(step)
    return history


if __name__ == "__main__":
    main()
