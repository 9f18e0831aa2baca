"""The baseline: a plain textbook DCGAN, as in the PyTorch DCGAN example.

Exactly the example's recipe, nothing tuned: fp32, contiguous (NCHW) tensors,
``nn.Sigmoid`` at D's end with ``nn.BCELoss``, default-config
``Adam(lr=2e-4, betas=(0.5, 0.999))`` (no fused/foreach flags), separate D passes
on the real and the fake batch, and the example's step order:

1. ``netD.zero_grad()``; D on reals, ``errD_real.backward()``;
2. fakes ``netG(noise)``; D on ``fake.detach()``, ``errD_fake.backward()``; ``optimizerD.step()``;
3. ``netG.zero_grad()``; D on the same fakes with real labels, ``errG.backward()``; ``optimizerG.step()``;

and, like the example, the ``.item()`` reads of ``D(x)``, ``D(G(z))`` and the
losses on every iteration. The layer widths equal dist_gan's DCGAN
(``dist_gan.models.dcgan``) at the same resolution/nz/ngf/ndf, so the two steps
do the same convolutions; the benchmarks check that the parameter counts match.

The textbook trainer (``train_textbook``) reads an ImageFolder through a
torchvision ``DataLoader`` with ``Resize``/``CenterCrop``/``ToTensor``/``Normalize``,
as the example does.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Iterator, Optional

import torch
from torch import nn

REAL_LABEL, FAKE_LABEL = 1.0, 0.0


def weights_init(m: nn.Module) -> None:
    """The example's custom init."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight.data, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight.data, 1.0, 0.02)
        nn.init.constant_(m.bias.data, 0)


def _blocks(resolution: int) -> int:
    return int(math.log2(resolution)) - 2


class TextbookGenerator(nn.Module):
    def __init__(self, resolution: int = 64, nz: int = 100, ngf: int = 64, nc: int = 3) -> None:
        super().__init__()
        n = _blocks(resolution)
        widths = [ngf * 2 ** (n - 1 - i) for i in range(n)]
        layers = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class TextbookDiscriminator(nn.Module):
    def __init__(self, resolution: int = 64, ndf: int = 64, nc: int = 3) -> None:
        super().__init__()
        n = _blocks(resolution)
        widths = [ndf * 2**i for i in range(n)]
        layers = [nn.Conv2d(nc, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.main(input)


class TextbookDCGAN:
    """netG, netD, BCELoss and two default Adams; ``step(real)`` is one example iteration."""

    def __init__(self, device: torch.device | str = "cpu", resolution: int = 64, nz: int = 100,
                 ngf: int = 64, ndf: int = 64, lr: float = 2e-4, beta1: float = 0.5, seed: Optional[int] = None) -> None:
        if seed is not None:
            torch.manual_seed(seed)
        self.device = torch.device(device)
        self.nz = nz
        self.netG = TextbookGenerator(resolution, nz, ngf).to(self.device)
        self.netG.apply(weights_init)
        self.netD = TextbookDiscriminator(resolution, ndf).to(self.device)
        self.netD.apply(weights_init)
        self.criterion = nn.BCELoss()
        self.optimizerD = torch.optim.Adam(self.netD.parameters(), lr=lr, betas=(beta1, 0.999))
        self.optimizerG = torch.optim.Adam(self.netG.parameters(), lr=lr, betas=(beta1, 0.999))

    def step(self, real_cpu: torch.Tensor) -> Dict[str, float]:
        """One iteration of the example's loop on a float batch in [-1, 1]."""
        netD, netG, criterion, device = self.netD, self.netG, self.criterion, self.device
        ############################
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        ###########################
        # train with real
        netD.zero_grad()
        real = real_cpu.to(device)
        batch_size = real.size(0)
        label = torch.full((batch_size,), REAL_LABEL, dtype=real.dtype, device=device)
        output = netD(real).view(-1)
        errD_real = criterion(output, label)
        errD_real.backward()
        D_x = output.mean().item()
        # train with fake
        noise = torch.randn(batch_size, self.nz, 1, 1, device=device)
        fake = netG(noise)
        label.fill_(FAKE_LABEL)
        output = netD(fake.detach()).view(-1)
        errD_fake = criterion(output, label)
        errD_fake.backward()
        D_G_z1 = output.mean().item()
        errD = errD_real + errD_fake
        self.optimizerD.step()
        ############################
        # (2) Update G network: maximize log(D(G(z)))
        ###########################
        netG.zero_grad()
        label.fill_(REAL_LABEL)  # fake labels are real for generator cost
        output = netD(fake).view(-1)
        errG = criterion(output, label)
        errG.backward()
        D_G_z2 = output.mean().item()
        self.optimizerG.step()
        return {"loss_d": errD.item(), "loss_g": errG.item(), "d_real": D_x, "d_fake": D_G_z1, "d_fake_g": D_G_z2}


def imagefolder_loader(root: str, batch: int, workers: int, image_size: int = 64, pin_memory: bool = False,
                       shuffle: bool = True):
    """The example's data path: ImageFolder + Resize/CenterCrop/ToTensor/Normalize + DataLoader."""
    import torchvision.datasets as dset
    import torchvision.transforms as transforms

    dataset = dset.ImageFolder(
        root=root,
        transform=transforms.Compose([
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]),
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=shuffle, num_workers=workers,
                                       pin_memory=pin_memory, drop_last=True)


def endless(loader) -> Iterator[torch.Tensor]:
    """Images only, epoch after epoch."""
    while True:
        for images, _ in loader:
            yield images


def train_textbook(root: str, batch: int, iters: int, workers: int, device: torch.device | str = "cpu",
                   warmup: int = 2, seed: int = 0) -> Dict[str, float]:
    """A short real run of the textbook trainer; wall-clock images/s over ``iters`` steps after ``warmup``."""
    model = TextbookDCGAN(device, seed=seed)
    data = endless(imagefolder_loader(root, batch, workers, pin_memory=torch.device(device).type == "cuda"))
    for _ in range(warmup):
        model.step(next(data))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        stats = model.step(next(data))
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"img_per_s": batch * iters / dt, "seconds": dt, "iters": iters, "last": stats}
