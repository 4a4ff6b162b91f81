"""PNG figures of generated samples: 2-D scatter panels and digit grids, one panel per NFE."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from torch import Tensor  # noqa: E402


def sample_panels(samples: dict[int, Tensor], path: Path, title: str, reference: Tensor | None = None) -> Path:
    """One panel per NFE: a scatter of 2-D samples ``[N, 2]`` (over the grey test points) or a grid of
    the first 100 images ``[N, 1, H, W]`` (10 per row: one class per column for conditional models)."""
    nfes = sorted(samples)
    fig, axes = plt.subplots(1, len(nfes), figsize=(3.2 * len(nfes), 3.4), squeeze=False)
    for ax, nfe in zip(axes[0], nfes):
        x = samples[nfe].detach().cpu().float()
        if x.ndim == 2:
            if reference is not None:
                ax.scatter(reference[:, 0], reference[:, 1], s=1, c="0.8", rasterized=True)
            ax.scatter(x[:, 0], x[:, 1], s=1, c="C0", rasterized=True)
            ax.set_xlim(-4, 4)
            ax.set_ylim(-4, 4)
            ax.set_aspect("equal")
        else:
            images = x[:100].clamp(-1, 1)
            rows = images.shape[0] // 10
            side = images.shape[-1]
            grid = images[: rows * 10, 0].reshape(rows, 10, side, side).permute(0, 2, 1, 3).reshape(rows * side, 10 * side)
            ax.imshow(grid.numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.axis("off")
        ax.set_title(f"NFE {nfe}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
