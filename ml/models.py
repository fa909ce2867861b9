"""The paper's classifiers, readable top to bottom.

At width 1 and 64x64 inputs these are the paper's sizes: a VGG-19 stage layout (2, 2, 4, 4, 4
3x3 convolutions with BN + ReLU, 64..512 channels, max-pool after each stage, a 4096-wide
three-layer classifier), a ResNet that wraps each of those stages in a 1x1-projection shortcut,
a UNet with that ResNet as encoder and a transpose-convolution decoder from a 1024-channel
bottleneck, and an MLP VAE (hidden 1024, latent 8). `width` multiplies every channel and hidden
size so that CPU-sized versions train in seconds. Every classifier has one output per class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml.config import RunConfig

STAGE_DEPTHS = (2, 2, 4, 4, 4)
STAGE_CHANNELS = (64, 128, 256, 512, 512)
FC_WIDTH = 4096
BOTTLENECK_CHANNELS = 1024
VAE_HIDDEN = 1024
CONV_VAE_CHANNELS = (32, 64, 128)


def scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Stage(nn.Sequential):
    """`depth` 3x3 conv-BN-ReLU layers at one resolution (a VGG block)."""

    def __init__(self, c_in: int, c_out: int, depth: int):
        super().__init__(*[conv_bn_relu(c_in if i == 0 else c_out, c_out) for i in range(depth)])


class ResidualStage(nn.Module):
    """A VGG block plus a 1x1-projection shortcut from its input to its output."""

    def __init__(self, c_in: int, c_out: int, depth: int):
        super().__init__()
        self.body = Stage(c_in, c_out, depth)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def stage_channels(width: float) -> list[int]:
    return [scaled(c, width) for c in STAGE_CHANNELS]


def fc_head(in_features: int, width: float, num_classes: int) -> nn.Sequential:
    hidden = scaled(FC_WIDTH, width)
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
        nn.Linear(hidden, num_classes),
    )


class ConvNet(nn.Module):
    """VGG (plain stages) or ResNet (residual stages): five stages, each followed by a 2x2 max-pool."""

    def __init__(self, residual: bool, width: float, image_size: int, num_classes: int):
        super().__init__()
        block = ResidualStage if residual else Stage
        channels = stage_channels(width)
        c_in = [1, *channels[:-1]]
        self.stages = nn.ModuleList(block(i, o, d) for i, o, d in zip(c_in, channels, STAGE_DEPTHS))
        final_size = image_size // 2 ** len(STAGE_DEPTHS)
        self.head = fc_head(channels[-1] * final_size**2, width, num_classes)

    def features(self, x: Tensor) -> list[Tensor]:
        """Each stage's output before pooling (the UNet's skips and the feature-map figures)."""
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
            x = F.max_pool2d(x, 2)
        return outputs

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.max_pool2d(self.features(x)[-1], 2))


class UpStage(nn.Module):
    """Upsample by 2 with a transpose conv, concatenate the encoder's skip, one conv.

    As the authors' decoder block, the conv's BN + ReLU is followed by a second BN + ReLU.
    """

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 2, stride=2)
        self.body = nn.Sequential(conv_bn_relu(c_out + c_skip, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.body(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    """ResNet encoder, a one-conv 1024-channel bottleneck, a decoder with skips, then global average pooling.

    The encoder's `stages` are named and shaped as in ConvNet(residual=True), so a trained
    resnet's stages load into it unchanged (`unet-pretrained`). `freeze_encoder` keeps those
    stages as loaded, batch-norm statistics included, as the authors trained their unet-pretrained.
    """

    def __init__(self, width: float, image_size: int, num_classes: int, freeze_encoder: bool = False):
        super().__init__()
        channels = stage_channels(width)
        c_in = [1, *channels[:-1]]
        self.stages = nn.ModuleList(ResidualStage(i, o, d) for i, o, d in zip(c_in, channels, STAGE_DEPTHS))
        bottleneck = scaled(BOTTLENECK_CHANNELS, width)
        self.bottleneck = conv_bn_relu(channels[-1], bottleneck)
        ups, c = [], bottleneck
        for skip in reversed(channels):
            ups.append(UpStage(c, skip, skip))
            c = skip
        self.ups = nn.ModuleList(ups)
        self.classifier = nn.Linear(channels[0], num_classes)
        self.freeze_encoder = freeze_encoder
        self.stages.requires_grad_(not freeze_encoder)

    features = ConvNet.features

    def train(self, mode: bool = True) -> UNet:
        super().train(mode)
        if self.freeze_encoder:
            self.stages.eval()  # a frozen encoder's batch norms keep the statistics it was trained with
        return self

    def forward(self, x: Tensor) -> Tensor:
        skips = self.features(x)
        x = self.bottleneck(F.max_pool2d(skips[-1], 2))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.classifier(x.mean(dim=(2, 3)))


class VAEBase(nn.Module):
    """What every VAE here shares: `encode` to (mu, log-variance), `decode` to [-1, 1] pixels, and a
    forward pass that samples the latent while training and takes its mean otherwise.

    `denoising`: whether, under the noisy condition, training asks it to reconstruct the clean
    image from the corrupted one rather than the corrupted image itself.
    """

    denoising = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode(z), mu, logvar


class VAE(VAEBase):
    """MLP VAE: two hidden layers to (mu, log-variance), three hidden layers back to [-1, 1] pixels.

    The authors' decoder ends in a sigmoid, whose [0, 1] cannot reach the -1 background of their
    own [-1, 1] inputs; ours ends in tanh.
    """

    def __init__(self, width: float, image_size: int, latent_dim: int):
        super().__init__()
        pixels, hidden = image_size**2, scaled(VAE_HIDDEN, width)
        self.image_size = image_size
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)
        )
        self.to_mu = nn.Linear(hidden, latent_dim)
        self.to_logvar = nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, pixels), nn.Tanh(),
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).view(-1, 1, self.image_size, self.image_size)


class ConvVAE(VAEBase):
    """Convolutional VAE (beyond the paper): three stride-2 4x4 convolutions with BN + ReLU to
    (mu, log-variance), a linear map back to the last feature map, three transpose convolutions up
    to tanh pixels.

    The paper's MLP VAE fails on noisy images because reconstructing them rewards encoding the
    corruptions (lifted backgrounds, grey boxes and borders carry more pixel energy than the
    digit), so its 8 latent dimensions hold the noise and K-means splits on it. This one is a
    denoising VAE: trained on corrupted images to reconstruct the clean ones, its latent keeps what
    the clean digit needs, with no labels involved. Convolutions give it the translation
    equivariance the corrupted poses call for.
    """

    DOWNSAMPLING = 2 ** len(CONV_VAE_CHANNELS)
    denoising = True

    def __init__(self, width: float, image_size: int, latent_dim: int):
        super().__init__()
        channels = [scaled(c, width) for c in CONV_VAE_CHANNELS]
        self.image_size, self.final_size = image_size, image_size // self.DOWNSAMPLING
        down, c_in = [], 1
        for c in channels:
            down += [nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.encoder = nn.Sequential(*down, nn.Flatten())
        flat = channels[-1] * self.final_size**2
        self.to_mu = nn.Linear(flat, latent_dim)
        self.to_logvar = nn.Linear(flat, latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(latent_dim, flat), nn.ReLU(inplace=True))
        up = []
        for c_in, c_out in zip(channels[::-1], channels[-2::-1]):
            up += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True)]
        self.decoder = nn.Sequential(*up, nn.ConvTranspose2d(channels[0], 1, 4, stride=2, padding=1), nn.Tanh())

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        h = self.from_latent(z).view(len(z), -1, self.final_size, self.final_size)
        return self.decoder(h)


class VAESVM(nn.Module):
    """A VAE whose latent mean is classified by a linear head trained with the hinge loss.

    One score per class, each trained one-vs-rest (`ml.train.hinge_step`); the class is the highest score.
    The authors' head has the same shape but trains both scores toward the same +-1 target, so
    their argmax is decided by which score ends up larger in magnitude, right or inverted by chance.
    """

    def __init__(self, vae: nn.Module, latent_dim: int, num_classes: int):
        super().__init__()
        self.vae = vae
        self.head = nn.Linear(latent_dim, num_classes)

    def scores(self, x: Tensor) -> Tensor:
        return self.head(self.vae.encode(x)[0])


class VAEKMeans(nn.Module):
    """A VAE whose latent means are clustered; each cluster carries a class label (`ml.train.fit_kmeans`).

    `spherical` (the convolutional VAE's) clusters directions instead of points: each latent mean is
    taken relative to `origin`, the coordinate-wise median of the training latents, and scaled to
    unit length. Under the noisy condition how strongly an image is corrupted moves its latent mean
    along that radius, and Euclidean K-means then splits the images by corruption rather than by digit.

    Centres, origin and the cluster-to-class map are buffers, so they live in the safetensors file with the weights.
    """

    def __init__(self, vae: nn.Module, latent_dim: int, n_clusters: int, num_classes: int, spherical: bool = False):
        super().__init__()
        self.vae = vae
        self.num_classes = num_classes
        self.spherical = spherical
        self.register_buffer("centres", torch.zeros(n_clusters, latent_dim))
        self.register_buffer("cluster_labels", torch.zeros(n_clusters, dtype=torch.long))
        if spherical:
            self.register_buffer("origin", torch.zeros(latent_dim))

    def features(self, z: Tensor) -> Tensor:
        """What K-means clusters: the latent means, or for a spherical model their directions from `origin`."""
        return F.normalize(z - self.origin, dim=1) if self.spherical else z

    def assign(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest cluster and the Euclidean distance to its centre (on the unit sphere if spherical), per image."""
        distances = torch.cdist(self.features(self.vae.encode(x)[0].float()), self.centres)
        distance, cluster = distances.min(dim=1)
        return cluster, distance


def build_model(cfg: RunConfig) -> nn.Module:
    """The untrained network a run config describes (weights are loaded or trained separately)."""
    t, size, k = cfg.training, cfg.dataset.image_size, len(cfg.dataset.classes)
    if cfg.model in ("vgg", "resnet", "unet", "unet-pretrained") and size % 2 ** len(STAGE_DEPTHS):
        raise ValueError(f"image_size must be a multiple of 32 for {cfg.model} (five 2x2 poolings), got {size}")
    if cfg.model == "vgg":
        return ConvNet(residual=False, width=t.width, image_size=size, num_classes=k)
    if cfg.model == "resnet":
        return ConvNet(residual=True, width=t.width, image_size=size, num_classes=k)
    if cfg.model == "unet":
        return UNet(width=t.width, image_size=size, num_classes=k)
    if cfg.model == "unet-pretrained":
        return UNet(width=t.width, image_size=size, num_classes=k, freeze_encoder=not t.finetune_encoder)
    vae = ConvVAE if cfg.model.startswith("conv-") else VAE
    if vae is ConvVAE and size % ConvVAE.DOWNSAMPLING:
        raise ValueError(f"image_size must be a multiple of {ConvVAE.DOWNSAMPLING} for {cfg.model}, got {size}")
    if cfg.model in ("vae-svm", "conv-vae-svm"):
        return VAESVM(vae(t.width, size, t.latent_dim), t.latent_dim, k)
    if cfg.model in ("vae-kmeans", "conv-vae-kmeans"):
        return VAEKMeans(vae(t.width, size, t.latent_dim), t.latent_dim, cfg.n_clusters, k, spherical=vae is ConvVAE)
    raise ValueError(f"unknown model {cfg.model!r}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def predict(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per-image outputs for a batch: `class_index` and `probabilities` (N, K) for every model,
    plus `margin` for a two-class VAE + SVM and `cluster` / `distance` for VAE + K-means.

    The SVM's probabilities are the softmax of its scores, monotone, not calibrated; with two classes
    its margin is the second class's score minus the first's (the softmax is then its logistic).
    K-means gives a hard assignment, so its probabilities are one-hot.
    """
    model.eval()
    if isinstance(model, VAESVM):
        scores = model.scores(x).float()
        out = {"class_index": scores.argmax(1), "probabilities": torch.softmax(scores, 1)}
        if scores.shape[1] == 2:
            out["margin"] = scores[:, 1] - scores[:, 0]
        return out
    if isinstance(model, VAEKMeans):
        cluster, distance = model.assign(x)
        label = model.cluster_labels[cluster]
        probs = F.one_hot(label, model.num_classes).float()
        return {"class_index": label, "probabilities": probs, "cluster": cluster, "distance": distance}
    probs = torch.softmax(model(x).float(), dim=1)
    return {"class_index": probs.argmax(1), "probabilities": probs}


def vae_of(model: nn.Module) -> VAEBase:
    """The VAE inside a VAE classifier; a ValueError for a CNN, which has none."""
    if isinstance(model, (VAESVM, VAEKMeans)):
        return model.vae
    raise ValueError("this model is a CNN classifier: it has no VAE to reconstruct or embed with")
