"""The paper's figures (section 3.2, figures 1-9) and a confusion matrix as PNG bytes, for a trained
model and its data.

Every function builds its own `matplotlib.figure.Figure` and renders it through the Agg canvas.
Nothing goes through pyplot, so there is no global figure registry and no GUI backend: requests
served concurrently by a web server share no plotting state. `render` maps a figure name of the
API onto the right function and the model's validation data, and raises `FigureNotApplicable`
when the figure does not exist for the model kind (an MLP VAE has no kernels, a CNN has no
latent space).
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.ticker import MaxNLocator
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits  # scikit-learn's own dependency for its thread pools
from torch import Tensor, nn

from ml.data import Dataset
from ml.evaluation import evaluate
from ml.models import VAEBase, VAEKMeans, vae_of

FIGURES = ("training-curves", "kernels", "feature-maps", "latent-tsne", "latent-classifiers", "reconstructions",
           "confusion-matrix")
DPI = 100
SEED = 0
# Feature maps shown per layer: the last VGG stage has up to 512 channels, far too many to read.
MAX_CHANNELS = 16
# Validation images embedded by t-SNE: it runs on the request's CPU, and 500 points take seconds.
TSNE_POINTS = 500
# Points drawn on the SVM hyperplane for figure 8, embedded together with the latents.
HYPERPLANE_POINTS = 100
RECONSTRUCTIONS_PER_CLASS = 4

ArrayOrTensor = Tensor | np.ndarray

LOSS_KEYS = {"loss": "train loss", "recon_loss": "reconstruction", "kl_loss": "KL", "val_loss": "validation loss"}
ACCURACY_KEYS = {"train_accuracy": "train", "val_accuracy": "validation"}


class FigureNotApplicable(ValueError):
    """The figure does not exist for this kind of model (kernels of an MLP VAE, latents of a CNN)."""


def _png(fig: Figure) -> bytes:
    """Render with Agg, then clear the figure: it was never registered with pyplot, so clearing
    its artists is all the closing it needs."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        fig.clear()
    return buffer.getvalue()


def _numpy(values: ArrayOrTensor) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of the most square grid holding n images."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _image_grid(parent: Figure | SubFigure, images: np.ndarray, title: str, **imshow: Any) -> np.ndarray:
    """Images (n, h, w) in a square grid without ticks; returns the axes so a colour bar can span them."""
    axes = parent.subplots(*_grid_shape(len(images)), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image in zip(axes.flat, images):
        ax.imshow(image, **imshow)
    parent.suptitle(title)
    return axes


# Training curves (figures 1-3)


def _plot_series(ax: Axes, history: Sequence[dict], keys: dict[str, str], phase: str | None = None) -> None:
    """One line per metric key against epoch, over the records that have it (and are of `phase`).

    Markers make a one-epoch run, or K-means' single accuracy record, visible as points.
    """
    for key, label in keys.items():
        records = [r for r in history if key in r and (phase is None or r["phase"] == phase)]
        if records:
            ax.plot([r["epoch"] for r in records], [r[key] for r in records], marker="o", markersize=3, label=label)


def _finish_panel(ax: Axes, title: str, allow_log: bool) -> None:
    """Title, axes and legend; a log scale where a series spans more than a decade (a VAE's
    reconstruction term dwarfs its KL term). A run cancelled before any accuracy was measured
    leaves its accuracy panel empty, and says so."""
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not ax.get_lines():
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        return
    epochs = np.unique(np.concatenate([line.get_xdata() for line in ax.get_lines()]))
    if len(epochs) == 1:  # the integer locator finds no integer in the narrow range around one point
        ax.set_xticks(epochs)
    values = np.concatenate([line.get_ydata() for line in ax.get_lines()])
    if allow_log and (values > 0).all() and values.max() > 10 * values.min():
        ax.set_yscale("log")
    ax.legend(fontsize="small")


def training_curves(history: Sequence[dict]) -> bytes:
    """Loss (with its reconstruction and KL parts for a VAE), accuracies and gradient norm per epoch.

    Each training phase gets its own loss panel, because a VAE's loss and an SVM head's hinge
    loss are on unrelated scales; the accuracy and gradient-norm panels share the epoch axis.
    """
    if not history:
        raise FigureNotApplicable("no training epochs were recorded for this model")
    phases = list(dict.fromkeys(r["phase"] for r in history))
    fig = Figure(figsize=(4.0 * (len(phases) + 2), 3.6), layout="constrained")
    axes = list(fig.subplots(1, len(phases) + 2, squeeze=False)[0])
    for phase in phases:
        ax = axes.pop(0)
        _plot_series(ax, history, LOSS_KEYS, phase)
        _finish_panel(ax, f"loss ({phase} phase)", allow_log=True)
    _plot_series(axes[0], history, ACCURACY_KEYS)
    _finish_panel(axes[0], "accuracy", allow_log=False)
    for phase in phases:
        _plot_series(axes[1], history, {"grad_norm": f"{phase} phase"}, phase)
    _finish_panel(axes[1], "gradient norm", allow_log=True)
    return _png(fig)


# Kernels and feature maps (figures 4-6)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    """The spatial convolutions in `module`, in forward order. The 1x1 convolutions left out are
    the residual shortcuts' projections: they extract no spatial feature, and the last one would
    otherwise stand in for a ResNet's last feature layer."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)]
    if not convs:
        raise FigureNotApplicable(
            f"{type(module).__name__} has no convolution layers: kernels and feature maps exist only for the CNNs "
            "and the convolutional VAEs"
        )
    return convs


def kernels(model: nn.Module) -> bytes:
    """The first convolution's kernels, on one colour scale symmetric about 0 so that signs and
    magnitudes compare across kernels."""
    weight = _numpy(_convs(model)[0].weight)[:, 0]  # the input is grayscale: one input channel
    limit = float(np.abs(weight).max()) or 1.0
    rows, cols = _grid_shape(len(weight))
    fig = Figure(figsize=(max(3.5, 0.8 * cols + 1.2), max(3.0, 0.8 * rows + 0.6)), layout="constrained")
    axes = _image_grid(fig, weight, f"first-layer kernels ({len(weight)})", cmap="RdBu_r", vmin=-limit, vmax=limit)
    fig.colorbar(axes.flat[0].images[0], ax=axes, shrink=0.8)
    return _png(fig)


def _conv_outputs(model: nn.Module, image: Tensor, layers: Sequence[nn.Module]) -> list[Tensor]:
    """The outputs of `layers` for `image`, caught by forward hooks during one forward pass.

    A hook fires for every forward through the module, and a served model is shared between
    request threads, so each hook keeps only outputs computed by the thread that installed it.
    """
    owner = threading.get_ident()
    caught: dict[nn.Module, Tensor] = {}

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        if threading.get_ident() == owner:
            caught[module] = output

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        with torch.no_grad():
            model(image.to(_device(model), torch.float32))
    finally:
        for handle in handles:
            handle.remove()
    return [caught[layer] for layer in layers]


def feature_maps(model: nn.Module, image: Tensor) -> bytes:
    """The input image and up to MAX_CHANNELS feature maps of the encoder's first and last
    convolution: contours come out of the first, abstract features out of the last (figures 5-6).

    For a UNet the last convolution is that of the encoder (`stages`), not of the decoder; for a
    convolutional VAE, that of its encoder (its decoder's are transposed convolutions).
    """
    network = getattr(model, "vae", model)
    convs = _convs(getattr(network, "stages", network))
    outputs = _conv_outputs(network, image, [convs[0], convs[-1]])
    fig = Figure(figsize=(11.0, 4.6), layout="constrained")
    left, *rights = fig.subfigures(1, 3, width_ratios=[1.0, 2.0, 2.0])
    _image_grid(left, _numpy(image)[0], "input", cmap="gray", vmin=-1.0, vmax=1.0)
    for subfig, output, which in zip(rights, outputs, ("first", "last")):
        maps = _numpy(output[0])
        shown, (channels, height, width) = min(len(maps), MAX_CHANNELS), maps.shape
        title = f"{which} conv layer: {shown} of {channels} channels, {height}x{width}"
        _image_grid(subfig, maps[:MAX_CHANNELS], title, cmap="viridis")
    return _png(fig)


# Latent space (figures 7-8)


def _tsne(points: np.ndarray) -> np.ndarray:
    """A 2-D t-SNE embedding, reproducible; perplexity is kept below the number of points as
    t-SNE requires, and PCA initialisation needs at least two dimensions and points.

    It runs on one OpenMP thread: the Barnes-Hut gradient's threads spin-wait for each other,
    and on a busy machine (a web server's other requests, training) that made 500 points take
    20 s instead of 2 s.
    """
    n, d = points.shape
    if n < 2:
        raise ValueError("t-SNE needs at least two points")
    init = "pca" if min(n, d) >= 2 else "random"
    tsne = TSNE(n_components=2, perplexity=min(30.0, n - 1.0), init=init, random_state=SEED)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(points)


def _scatter_by_label(ax: Axes, xy: np.ndarray, labels: ArrayOrTensor, title: str) -> None:
    """Points coloured by label (the n-th sorted label takes colour Cn), with a legend."""
    labels = _numpy(labels)
    for index, value in enumerate(np.unique(labels)):
        ax.scatter(*xy[labels == value].T, s=10, linewidths=0, color=f"C{index % 10}", label=str(value))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize="small", markerscale=2)


def latent_tsne(z: ArrayOrTensor, labels: ArrayOrTensor | Sequence) -> bytes:
    """t-SNE of latent means coloured by true label: separated classes are what the SVM and
    K-means exploit (figure 7); merged ones explain their failure on noisy images (figure 17)."""
    fig = Figure(figsize=(6.0, 5.0), layout="constrained")
    _scatter_by_label(fig.subplots(), _tsne(_numpy(z)), labels, "latent space (t-SNE), true labels")
    return _png(fig)


def _hyperplane_points(z: np.ndarray, w: np.ndarray, b: float, n: int = HYPERPLANE_POINTS) -> np.ndarray:
    """n points of the hyperplane {<w|z> + b = 0} where it passes through the data: the crossings
    of segments between random pairs of latents on opposite sides. Points far from every latent
    would land anywhere in a t-SNE plane; these land between the classes the SVM separates. When
    every latent is on one side (an SVM that failed), their orthogonal projections instead."""
    w = np.asarray(w, dtype=np.float64).ravel()
    norm2 = float(w @ w)
    if norm2 == 0.0:
        raise ValueError("the SVM weight vector is zero: it defines no hyperplane")
    rng = np.random.default_rng(SEED)
    side = z @ w + b
    negative, positive = z[side < 0], z[side >= 0]
    if len(negative) and len(positive):
        start = negative[rng.integers(len(negative), size=n)]
        end = positive[rng.integers(len(positive), size=n)]
        t = -(start @ w + b) / ((end - start) @ w)  # the denominator is positive: the sides differ
        return start + t[:, None] * (end - start)
    near = z[rng.integers(len(z), size=n)]
    return near - np.outer((near @ w + b) / norm2, w)


def latent_classifiers(
    z: ArrayOrTensor,
    labels: ArrayOrTensor | Sequence,
    assigned: ArrayOrTensor | Sequence | None = None,
    svm_w: ArrayOrTensor | None = None,
    svm_b: float | None = None,
    assigned_title: str = "K-means labels",
) -> bytes:
    """Figure 8: left, the t-SNE plane coloured by the label a classifier assigned (K-means's, or a
    K-class SVM's, which has no single hyperplane); right, the true labels with points of a two-class
    SVM's hyperplane embedded jointly, falling between the classes when it separates them. Only the
    panels given are drawn."""
    if (svm_w is None) != (svm_b is None):
        raise ValueError("the SVM hyperplane needs both svm_w and svm_b")
    if assigned is None and svm_w is None:
        raise ValueError("nothing to show: give assigned labels, an SVM hyperplane (svm_w, svm_b) or both")
    z = _numpy(z).astype(np.float64)
    plane = _hyperplane_points(z, _numpy(svm_w), float(svm_b)) if svm_w is not None else z[:0]
    xy = _tsne(np.concatenate([z, plane]))
    data_xy, plane_xy = xy[: len(z)], xy[len(z) :]
    n_panels = (assigned is not None) + (svm_w is not None)
    fig = Figure(figsize=(6.0 * n_panels, 5.0), layout="constrained")
    axes = list(fig.subplots(1, n_panels, squeeze=False)[0])
    if assigned is not None:
        _scatter_by_label(axes.pop(0), data_xy, assigned, assigned_title)
    if svm_w is not None:
        ax = axes.pop(0)
        ax.scatter(*plane_xy.T, s=14, marker="x", color="black", zorder=3, label="SVM hyperplane")
        _scatter_by_label(ax, data_xy, labels, "true labels and SVM hyperplane points")
    return _png(fig)


# Reconstructions (figure 9)


def reconstructions(originals: ArrayOrTensor, recon: ArrayOrTensor) -> bytes:
    """Originals (N, 1, S, S) above their reconstructions, both in [-1, 1] on one gray scale."""
    originals, recon = _numpy(originals)[:, 0], _numpy(recon)[:, 0]
    if originals.shape != recon.shape:
        raise ValueError(f"originals {originals.shape} and reconstructions {recon.shape} differ in shape")
    n = len(originals)
    fig = Figure(figsize=(max(3.0, 1.1 * n), 2.6), layout="constrained")
    axes = fig.subplots(2, n, squeeze=False)
    for row, images, name in ((0, originals, "original"), (1, recon, "reconstruction")):
        for ax, image in zip(axes[row], images):
            ax.imshow(image, cmap="gray", vmin=-1.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(name)
    return _png(fig)


# Dispatch by name, for the API


def _vae(model: nn.Module) -> VAEBase:
    try:
        return vae_of(model)
    except ValueError as exc:
        raise FigureNotApplicable(
            f"{exc}; latent-space figures and reconstructions exist only for the VAE models"
        ) from exc


def _balanced_indices(y: Tensor, per_class: int) -> Tensor:
    """The first `per_class` indices of each class, so figure 9 shows every digit."""
    return torch.cat([torch.nonzero(y == c).flatten()[:per_class] for c in y.unique()])


def _classifier_parts(model: nn.Module, x: Tensor, names: Sequence[str]) -> dict[str, Any]:
    """`latent_classifiers`' keywords for `model`: K-means labels as 'name (cluster k)', so colours match
    the true-label plot; a two-class SVM's w and b, the hyperplane where its two scores are equal; or a
    K-class SVM's predicted labels."""
    names = np.asarray(names)
    if isinstance(model, VAEKMeans):
        cluster, _ = model.assign(x)
        assigned = names[model.cluster_labels[cluster].cpu().numpy()]
        return {"assigned": [f"{d} (cluster {c})" for d, c in zip(assigned, cluster.tolist())]}
    w, b = model.head.weight, model.head.bias
    if len(w) == 2:
        return {"svm_w": w[1] - w[0], "svm_b": (b[1] - b[0]).item()}
    return {"assigned": names[model.scores(x).argmax(1).cpu().numpy()], "assigned_title": "SVM labels (one-vs-rest)"}


def confusion_matrix(matrix: Sequence[Sequence[int]], names: Sequence[str]) -> bytes:
    """Counts of true class (rows) against predicted class (columns), each cell shaded by its share
    of its row, so a small class's errors show as plainly as a large one's."""
    counts = np.asarray(matrix, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    k = len(names)
    fig = Figure(figsize=(2.0 + 0.6 * k, 1.5 + 0.6 * k), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, col), count in np.ndenumerate(counts):
        ax.text(col, row, str(count), ha="center", va="center", fontsize="small",
                color="white" if shares[row, col] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix\n{counts.trace()} of {counts.sum()} right")  # two lines: two classes make a narrow figure
    fig.colorbar(image, ax=ax, label="share of the true class")
    return _png(fig)


@torch.no_grad()
def render(
    name: str, model: nn.Module, data: Dataset, history: Sequence[dict], image: Tensor | None = None
) -> bytes:
    """The figure `name` (one of FIGURES) for an eval-mode model, from its validation split.

    `image` (1, 1, S, S) is the input of the feature maps, by default the first validation image.
    An unknown name is a plain ValueError; a known figure the model kind lacks is a
    FigureNotApplicable (also a ValueError, so check for it first).
    """
    if name not in FIGURES:
        raise ValueError(f"unknown figure {name!r}; the figures are {', '.join(FIGURES)}")
    if name == "training-curves":
        return training_curves(history)
    if name == "kernels":
        return kernels(model)
    if name == "feature-maps":
        return feature_maps(model, data.x_val[:1] if image is None else image)
    if name == "confusion-matrix":
        return confusion_matrix(evaluate(model, data)["confusion_matrix"], data.class_names)
    vae, device = _vae(model), _device(model)
    if name == "reconstructions":
        x = data.x_val[_balanced_indices(data.y_val, RECONSTRUCTIONS_PER_CLASS)].to(device)
        return reconstructions(x, vae.decode(vae.encode(x)[0]))
    x = data.x_val[:TSNE_POINTS].to(device)
    z = vae.encode(x)[0]
    labels = np.asarray(data.class_names)[data.y_val[:TSNE_POINTS].cpu().numpy()]
    if name == "latent-tsne":
        return latent_tsne(z, labels)
    return latent_classifiers(z, labels, **_classifier_parts(model, x, data.class_names))


# Excess-risk decomposition (figure 10)


def excess_risk_plot(report: dict) -> bytes:
    """Estimation and approximation error against parameter count (log scale when it spans over a decade), with one
    standard deviation over repeats as error bars, each point named by its model."""
    models = sorted(report["models"], key=lambda m: m["parameter_count"])
    if not models:
        raise FigureNotApplicable("the error analysis finished no model, so there is nothing to plot")
    params = np.array([m["parameter_count"] for m in models], dtype=float)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.subplots()
    for key, label, colour in (("ee", "estimation error", "tab:blue"), ("ae", "approximation error", "tab:red")):
        ax.errorbar(params, [m[f"{key}_mean"] for m in models], yerr=[m[f"{key}_std"] for m in models],
                    marker="o", capsize=3, color=colour, label=label)
    for m, x in zip(models, params):
        ax.annotate(m["model"], (x, m["ee_mean"]), textcoords="offset points", xytext=(4, 6), fontsize="small")
    if params.max() > 10 * params.min():
        ax.set_xscale("log")
    else:  # within a decade, log ticks would crowd the axis with labels like 1.46e5, 1.47e5, ...
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.set_xlabel("parameters")
    ax.set_ylabel("error (empirical risk difference)")
    ax.set_title(f"excess-risk decomposition: {report['n_train']} training images, R_n on {report['n_eval']}")
    ax.legend()
    return _png(fig)


# Table 1 beside the paper's (`classcomp reproduce`)


def accuracy_bars(table: dict) -> bytes:
    """Validation accuracy per model, one panel per condition, ours beside the paper's: Table 1 as
    `ml.experiment.paper_tables` gives it. A missing value leaves its bar out."""
    models, conditions = table["models"], table["conditions"]
    fig = Figure(figsize=(max(6.0, 1.2 * len(models)) * len(conditions) / 2 + 1.0, 4.0), layout="constrained")
    axes = fig.subplots(1, len(conditions), squeeze=False, sharey=True)[0]
    x = np.arange(len(models))
    lowest = 100.0
    for ax, condition in zip(axes, conditions):
        for offset, which in ((-0.2, "ours"), (0.2, "paper")):
            values = [table["values"][m][condition][which] for m in models]
            ax.bar(x + offset, [np.nan if v is None else v for v in values], width=0.4, label=which)
            lowest = min([lowest] + [v for v in values if v is not None])
        ax.set_title(condition)
        ax.set_xticks(x, models, rotation=45, ha="right")
    axes[0].set_ylabel(table["title"])
    # Bars from 0 would hide differences of a point near 100%; the noisy VAEs are near chance (50%).
    axes[0].set_ylim(min(40.0, lowest - 5), 101)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return _png(fig)
