"""The unforeseen attacks of Kang et al. ("Testing Robustness Against Unforeseen
Adversaries", 2019) as the CKA paper (Cianfarani et al. 2022) runs them: snow, Gabor
noise and JPEG, each at the parameters of that paper's evaluation attacks
(configs_cifar.yml, `EvalAttack`).

None of them is an Lp ball around the image. Snow adds bright, blurred streaks whose
flake intensities the attack chooses (their mean per 8x8 region of flakes capped by a
budget); Gabor adds band-pass Gabor noise made from a sparse grid of variables; JPEG
moves the quantised DCT coefficients of the image's JPEG encoding (YCbCr, 4:2:0).
Each draws its random start from its seed and then takes signed (snow, Gabor) or
normalised (JPEG) gradient steps on its own variables, as the reference code
(advex-uar 0.0.6) does; tests/test_unforeseen.py checks the images against that code,
seed for seed. Where the reference does something unexpected, this module does the
same and says so, so that results compare with the paper's.

Images are NCHW in [0, 1]; the side must be a multiple of 32 (snow's budget regions,
JPEG's 16 px macroblocks).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, ClassVar

import numpy as np
import scipy.sparse
import torch
import torch.nn.functional as F

from core.data import require_labels

Model = Callable[[torch.Tensor], torch.Tensor]


def _check_images(x: torch.Tensor, attack: str) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"the {attack} attack takes RGB images (N, 3, H, W), not {tuple(x.shape)}")
    if x.shape[2] != x.shape[3] or x.shape[2] % 32:
        raise ValueError(f"the {attack} attack needs square images whose side is a multiple "
                         f"of 32 px, not {x.shape[2]}x{x.shape[3]}")


def _loss_gradient(model: Model, images: Callable[[torch.Tensor], torch.Tensor],
                   variables: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d(cross-entropy summed over the batch)/d(variables) of model(images(variables))."""
    with torch.enable_grad():
        v = variables.detach().requires_grad_(True)
        loss = F.cross_entropy(model(images(v)), y, reduction="sum")
        grad, = torch.autograd.grad(loss, v)
    return grad


# ======================================================================== snow

def _stroke(end_row: int, end_col: int, width: float, mid: int,
            size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and coverage of an anti-aliased line `width` px wide from
    (mid, mid) to (end_row, end_col), clipped to rows mid..size-1 (a snowflake's streak)."""
    steep = abs(end_col - mid) < abs(end_row - mid)
    if steep:  # walk along the longer axis
        end_row, end_col = end_col, end_row
    slope = (end_row - mid) / (end_col - mid)
    width = width * math.sqrt(1 + abs(slope)) / 2
    cols = np.arange(mid, end_col + 1, dtype=float)
    centre = cols * slope + (end_col * mid - mid * end_row) / (end_col - mid)
    half = np.ceil(width / 2)
    rows = np.floor(centre)[:, None] + np.arange(-half - 1, half + 2)[None, :]
    coverage = np.clip(np.minimum(rows + 1 + width / 2 - centre[:, None],
                                  -rows + 1 + width / 2 + centre[:, None]), 0, 1).ravel()
    cols = np.repeat(cols, rows.shape[1])
    rows = rows.ravel()
    keep = (rows >= mid) & (rows < size) & (coverage > 0)
    rows, cols = rows[keep].astype(int), cols[keep].astype(int)
    return (cols, rows, coverage[keep]) if steep else (rows, cols, coverage[keep])


def _gaussian_blur(kernel: torch.Tensor, sigma: float) -> torch.Tensor:
    size = int(np.ceil(5 * sigma))
    grid = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(grid[:, None] ** 2 + grid[None, :] ** 2) / (2 * sigma ** 2))
    return F.conv2d(kernel, (g / g.sum()).view(1, 1, size, size), padding=1)


def snow_kernels(rng: np.random.RandomState) -> torch.Tensor:
    """The seven streak shapes of one snowfall, (1, 7, 13, 13): a blurred line from the
    centre to a random point, mirrored through the centre, all flipped left-right or none."""
    size, mid = 13, 6
    flip = rng.uniform() < 0.5
    kernels = []
    for _ in range(7):
        end_row, end_col = rng.randint(mid + 2, size), rng.randint(mid + 2, size)
        width = rng.choice([1, 3, 5], p=[0.6, 0.3, 0.1])
        k = np.zeros((size, size))
        rows, cols, coverage = _stroke(end_row, end_col, width, mid, size)
        k[rows, cols] = coverage
        k[:mid + 1, :mid + 1] = k[::-1, ::-1][:mid + 1, :mid + 1]
        if flip:
            k = k[:, ::-1]
        k = torch.tensor(k.copy(), dtype=torch.float32).view(1, 1, size, size)
        kernels.append(_gaussian_blur(k, rng.uniform(0.41, 0.6)))
    return torch.cat(kernels, 1)


def snowfall(power: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """The snow layer (N, 1, H, W) of flakes (N, 7, H/4, W/4) given as their intensities
    to the fourth power: flake k at its place on a 4 px grid (each of the seven streak
    shapes at its own offset), drawn with streak k."""
    n, _, h4, w4 = power.shape
    grid = power.new_zeros((n, 7, 4 * h4, 4 * w4))
    for i in range(4):
        grid[:, i, ::4, i::4] = power[:, i]
    for i in range(3):
        grid[:, 4 + i, i + 1::4, ::4] = power[:, 4 + i]
    return F.conv2d(grid, kernels.to(power), padding=kernels.shape[-1] // 2)


def add_snow(x: torch.Tensor, snow: torch.Tensor, brightness: float) -> torch.Tensor:
    """The snowy image: a quarter of the way to a brightened grey (the sky's
    discoloration), plus `brightness` times the snow layer, in [0, 1]."""
    grey = 0.2126 * x[:, 0:1] + 0.7152 * x[:, 1:2] + 0.0722 * x[:, 2:3]
    out = 0.75 * x + 0.25 * torch.maximum(x, grey * 1.5 + 0.5)
    return (out + brightness * snow).clamp(0, 1)


def snow_budget(flakes: torch.Tensor, budget: float) -> torch.Tensor:
    """Intensities in [1e-9, 1], scaled down where their mean over a region of 8x8 flakes
    exceeds the budget."""
    flakes = flakes.clamp(1e-9, 1)
    n, c, h, w = flakes.shape
    blocks = flakes.view(n, c, h // 8, 8, w // 8, 8)
    mean = blocks.mean((3, 5), keepdim=True)
    return (blocks * budget / mean.clamp_min(budget)).view(n, c, h, w)


# ======================================================================= Gabor

def gabor_kernel(sides: int, sigma: float, wavelength: float, theta: float,
                 size: int = 23) -> torch.Tensor:
    """A sum of `sides` Gabor filters at angles theta + pi*i/sides (size x size, on
    [-0.5, 0.5]^2): Gaussian envelope sigma, `wavelength` cycles across the patch.
    Computed in float32 in the reference's order: the noise's contrast step divides by
    near-zero spreads, so a last-bit difference here changes the attack."""
    sigma, wavelength, theta = (torch.as_tensor(v, dtype=torch.float32).reshape(1)
                                for v in (sigma, wavelength, theta))
    ys, xs = torch.meshgrid(torch.linspace(-0.5, 0.5, size), torch.linspace(-0.5, 0.5, size),
                            indexing="ij")
    width = (sigma + 1e-3) ** 2
    out = torch.zeros(size, size)
    for i in range(sides):
        t = theta if i == 0 else theta + math.pi * i / sides
        along = xs * torch.cos(t) + ys * torch.sin(t)
        across = -xs * torch.sin(t) + ys * torch.cos(t)
        envelope = torch.exp(-0.5 * (along ** 2 / width + across ** 2 / width))
        out = out + envelope * torch.cos(2 * math.pi * wavelength * along)
    return out


def _min_max(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1)
    lo = flat.min(1)[0].detach().view(-1, 1, 1, 1)
    hi = flat.max(1)[0].detach().view(-1, 1, 1, 1)
    return (v - lo) / (hi - lo)


def gabor_noise(variables: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Gabor noise (N, 1, H, W) in [0, 1]: the sparse variables (N, 1, H, W) convolved
    with each image's kernel, its contrast evened out (each deviation from the mean
    divided by the largest; the reference measures it through an FFT round trip of
    the squared deviation, kept so that iterates match), then scaled to [0, 1]."""
    n = variables.shape[0]
    pad = kernels.shape[-1] // 2
    noise = F.conv2d(variables.view(1, n, *variables.shape[2:]), kernels.to(variables),
                     groups=n, padding=pad).view(n, 1, *variables.shape[2:])
    mean = noise.flatten(1).mean(1).view(n, 1, 1, 1)
    spread = torch.fft.irfft2(torch.fft.rfft2((noise - mean) ** 2)).abs().sqrt()
    spread = spread / spread.flatten(1).max(1)[0].view(n, 1, 1, 1)
    gain = (1.001 / (0.001 + spread)).detach()
    return _min_max(mean.detach() + (noise - mean.detach()) * gain)


# ======================================================================== JPEG

# The JPEG standard's luminance and chrominance quantisation tables, transposed: the
# encoder below works on the transposed image, as the reference does (its random
# variables are laid out that way, so a seed means the same attack in both)
_LUMA = torch.tensor([[16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
                      [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
                      [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
                      [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]],
                     dtype=torch.float32).T
_CHROMA = torch.full((8, 8), 99.0)
_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99],
                                [47, 66, 99, 99]], dtype=torch.float32).T
_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                          [0.5, -0.418688, -0.081312]])
_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])
_FREQ = torch.arange(8, dtype=torch.float64)
# _DCT[u, x] = cos((2x + 1) u pi / 16); the orthonormal scale is applied per coefficient
_DCT = torch.cos((2 * _FREQ[None, :] + 1) * _FREQ[:, None] * math.pi / 16).float()
_ALPHA = torch.tensor([1 / math.sqrt(2)] + [1.0] * 7)
_SCALE = 0.25 * torch.outer(_ALPHA, _ALPHA)


def _blocks(channel: torch.Tensor) -> torch.Tensor:
    n, h, w = channel.shape
    return channel.view(n, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(n, -1, 8, 8)


def _unblock(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return blocks.view(-1, h // 8, w // 8, 8, 8).transpose(2, 3).reshape(-1, h, w)


def jpeg_variable_count(side: int) -> int:
    """How many coefficients the attack moves in one image: every luma coefficient and
    those of the two half-resolution chroma planes."""
    return (side // 8) ** 2 * 64 + 2 * (side // 16) ** 2 * 64


def jpeg_decode(x: torch.Tensor, shift: torch.Tensor, scale: float) -> torch.Tensor:
    """The image (N, 3, H, W) in [0, 1] encoded as JPEG at quality 50 (YCbCr, chroma at
    half resolution, 8x8 DCT divided by the standard tables) with every quantised
    coefficient moved by scale/2 * shift (N, jpeg_variable_count(H)), then decoded.
    No rounding: the encoding is the attack's differentiable surface."""
    n, _, side, _ = x.shape
    dev = x.device
    image = x.transpose(1, 3) * 255  # (N, W, H, 3), as the reference lays it out
    ycc = image @ _TO_YCBCR.T.to(dev) + torch.tensor([0.0, 128.0, 128.0], device=dev)
    planes = [ycc[..., 0], F.avg_pool2d(ycc[..., 1], 2), F.avg_pool2d(ycc[..., 2], 2)]
    luma = (side // 8) ** 2 * 64
    chroma = (side // 16) ** 2 * 64
    shifts = [shift[:, :luma], shift[:, luma:luma + chroma], shift[:, luma + chroma:]]
    dct, s = _DCT.to(dev), _SCALE.to(dev)
    decoded = []
    for plane, move, table in zip(planes, shifts, (_LUMA, _CHROMA, _CHROMA)):
        table = table.to(dev)
        size = plane.shape[-1]
        blocks = _blocks(plane) - 128
        coeffs = s * (dct @ blocks @ dct.T)
        quantised = coeffs / table + scale * 0.5 * move.reshape(n, -1, 8, 8)
        restored = quantised * table * _ALPHA.to(dev)[:, None] * _ALPHA.to(dev)[None, :]
        pixels = 0.25 * (dct.T @ restored @ dct) + 128
        decoded.append(_unblock(pixels, size, size))
    y, cb, cr = decoded
    cb = cb.repeat_interleave(2, 1).repeat_interleave(2, 2)
    cr = cr.repeat_interleave(2, 1).repeat_interleave(2, 2)
    ycc = torch.stack((y, cb, cr), -1) - torch.tensor([0.0, 128.0, 128.0], device=dev)
    rgb = (ycc @ _TO_RGB.T.to(dev)).clamp(0, 255)
    return rgb.transpose(1, 3) / 255


# ===================================================================== attacks

@dataclass(frozen=True)
class Unforeseen:
    """What the three attacks share: a value (hashable, printable, callable as
    attack(model, x, y)) whose random start comes from its seed, the same for every
    batch. They return the last iterate, as the reference does; for_accuracy() is the
    attack itself."""
    steps: int = 10
    seed: int = 0
    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if self.steps < 0 or any(getattr(self, f.name) < 0 for f in fields(self)
                                 if isinstance(getattr(self, f.name), float)):
            raise ValueError(f"the {self.kind} attack's settings must be non-negative")

    def __call__(self, model: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.kind)
        require_labels(y, "an attack")
        rng = np.random.RandomState(self.seed)
        gen = torch.Generator().manual_seed(self.seed)
        return self.search(model, x.detach(), y, rng, gen).detach()

    def search(self, model: Model, x: torch.Tensor, y: torch.Tensor,
            rng: np.random.RandomState, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def threat(self) -> str:
        return self.label

    def describe(self) -> str:
        return f"{self.label} ({self.steps} steps)"

    def for_accuracy(self) -> "Unforeseen":
        return self


@dataclass(frozen=True)
class Snow(Unforeseen):
    """Snow: seven streak shapes on a 4 px grid of flakes whose intensities the attack
    picks; their mean per region of 8x8 flakes is capped by `budget`, the snow's
    brightness is `eps` (the paper: 10 steps of 0.1, eps 2.0, budget 0.15)."""
    eps: float = 2.0
    step_size: float = 0.1
    budget: float = 0.15
    kind: ClassVar[str] = "snow"
    label: ClassVar[str] = "Snow"

    def search(self, model, x, y, rng, gen):
        n, _, side, _ = x.shape
        flakes = torch.exp(-1.0 / self.budget
                           * torch.rand((n, 7, side // 4, side // 4), generator=gen)).to(x)
        kernels = snow_kernels(rng).to(x)

        def image(power: torch.Tensor) -> torch.Tensor:
            return add_snow(x, snowfall(power, kernels), self.eps)
        for step in range(self.steps):
            # the reference steps along the sign of the gradient with respect to the
            # flakes' fourth powers (the intensities its backward pass reads are the
            # projected ones, all positive) and projects onto the budget after its forward
            # pass: before every step but the first, and not after the last
            grad = _loss_gradient(model, image, flakes ** 4, y)
            start = flakes if step == 0 else snow_budget(flakes, self.budget)
            flakes = start + self.step_size * grad.sign()
        return image(flakes ** 4)

    def describe(self) -> str:
        return (f"Snow ({self.steps} steps of {self.step_size:g}, brightness {self.eps:g}, "
                f"budget {self.budget:g})")


@dataclass(frozen=True)
class Gabor(Unforeseen):
    """Gabor noise: each image's own random Gabor kernel (1-10 orientations) over a
    sparse grid of variables in [-1, 1] that the attack picks; the noise, scaled to
    [0, 1], is added at `eps`/255 (the paper: 10 steps of 0.05, eps 75)."""
    eps: float = 75.0
    step_size: float = 0.05
    kind: ClassVar[str] = "gabor"
    label: ClassVar[str] = "Gabor"

    def search(self, model, x, y, rng, gen):
        n, _, side, _ = x.shape
        kernels = []
        for _ in range(n):
            sides = int(rng.randint(10)) + 1
            sigma = 0.3 * torch.rand(1, generator=gen) + 0.1
            wavelength = (23 / 4 - 3) * torch.rand(1, generator=gen) + 3
            theta = math.pi * torch.rand(1, generator=gen)
            kernels.append(gabor_kernel(sides, sigma, wavelength, theta))
        kernels = torch.stack(kernels)[:, None].to(x)
        rng.randint(50)  # the reference draws a kernel count it never uses: same stream
        start = scipy.sparse.random(side * n, side, density=1 / 14, format="csr",
                                    random_state=rng)
        start.data = start.data * 2 - 1
        variables = torch.tensor(start.todense(), dtype=torch.float32).view(n, 1, side, side)
        # the reference steps only the variables that start at zero (its mask is
        # `start == 0`) and zeroes the others from the first step on
        free = (variables == 0).to(x)
        variables = variables.to(x)

        def image(v: torch.Tensor) -> torch.Tensor:
            return (x + self.eps / 255 * gabor_noise(v, kernels)).clamp(0, 1)
        for _ in range(self.steps):
            grad = _loss_gradient(model, image, variables, y)
            variables = (variables + self.step_size * grad.sign()).clamp(-1, 1) * free
        return image(variables)

    def describe(self) -> str:
        return f"Gabor ({self.steps} steps of {self.step_size:g}, strength {self.eps:g}/255)"


@dataclass(frozen=True)
class JPEG(Unforeseen):
    """JPEG: the quantised DCT coefficients of the image's JPEG encoding moved by
    variables in an L2 ball of radius `eps` (and within +-2 each), found by normalised
    gradient steps (the paper: 10 steps of 1.0, eps 25)."""
    eps: float = 25.0
    step_size: float = 1.0
    kind: ClassVar[str] = "jpeg"
    label: ClassVar[str] = "JPEG"

    def search(self, model, x, y, rng, gen):
        n, _, side, _ = x.shape
        count = jpeg_variable_count(side)
        direction = torch.randn((n, count), generator=gen)
        direction = direction / direction.norm(dim=1, keepdim=True)
        radius = torch.rand(n, generator=gen).pow(1 / count)
        variables = (direction * radius[:, None] * self.eps).to(x)

        def image(v: torch.Tensor) -> torch.Tensor:
            return jpeg_decode(x, v, self.eps)
        for step in range(self.steps):
            # the reference takes its first gradient at the start as drawn and every
            # later one at the variables divided by eps (as its result is)
            at = variables if step == 0 else variables / self.eps
            grad = _loss_gradient(model, image, at, y) / (1.0 if step == 0 else self.eps)
            grad = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
            variables = variables + self.step_size * grad
            shrink = (self.eps / variables.norm(dim=1, keepdim=True)).clamp(max=1.0)
            variables = (variables * shrink).clamp(-2.0, 2.0)
        return image(variables / self.eps)

    def describe(self) -> str:
        return f"JPEG ({self.steps} steps of {self.step_size:g}, L2 radius {self.eps:g})"


UNFORESEEN: dict[str, type[Unforeseen]] = {"snow": Snow, "gabor": Gabor, "jpeg": JPEG}


def from_dict(d: dict[str, Any]) -> Unforeseen:
    """The attack a to_dict() describes."""
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in UNFORESEEN:
        raise ValueError(f"unknown attack kind {kind!r}: one of {list(UNFORESEEN)}")
    return UNFORESEEN[kind](**d)
