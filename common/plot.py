"""Matplotlib without a screen, figures written atomically, and grids of images saved as plain PNGs."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .files import atomic_path  # noqa: E402


def save_figure(fig, path, dpi=120):
    """Save `fig` to `path` (format from its suffix) via a temporary file, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))
    plt.close(fig)


def image_grid(images, nrow, padding=2, pad_value=0.0):
    """(N, C, H, W) images in [0, 1] -> one (C, rows * (H + padding) + padding, nrow * (W + padding) + padding)
    image: `nrow` to a row, left to right, then top to bottom, `padding` pixels of `pad_value` around each."""
    n, channels, height, width = images.shape
    rows = -(-n // nrow)
    grid = images.new_full((channels, rows * (height + padding) + padding, nrow * (width + padding) + padding),
                           pad_value)
    for k, image in enumerate(images):
        top, left = padding + (k // nrow) * (height + padding), padding + (k % nrow) * (width + padding)
        grid[:, top:top + height, left:left + width] = image
    return grid


def save_image(image, path):
    """A (3, H, W) image in [0, 1] as an 8-bit PNG at `path` (each value rounded to the nearest of 0..255)."""
    pixels = image.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", torch.uint8).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="png")
