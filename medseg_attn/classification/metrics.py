"""Classification metrics, computed by hand (NumPy), and the pictures and tables a person reads them from.

Conventions (those of scikit-learn, so numbers can be compared):

* **confusion matrix** ``C[i, j]``: images of true class i predicted as class j (rows true, columns predicted);
* **accuracy**: trace / total;
* **balanced accuracy**: mean recall over the classes that occur in the reference (robust to imbalance: always
  predicting the majority class scores 1/K);
* **precision / recall / F1** per class, 0 where the denominator is 0; **macro F1**: mean F1 over the classes
  that occur in the reference or the predictions;
* **one-vs-rest AUC** per class: the probability that a random image of the class gets a higher score for it
  than a random image of another class (ties count one half; the Mann-Whitney statistic); undefined (NaN) for a
  class absent from the reference or making up all of it; **macro AUC**: mean over the defined ones.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from medseg_attn.errors import UserError
from medseg_attn.io.files import atomic_write, atomic_write_text
from medseg_attn.io.tables import write_csv

__all__ = ["binary_auc", "classification_metrics", "confusion_matrix", "save_classification_curves",
           "save_confusion_matrix_png", "write_metrics"]


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    truth, predicted = np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    return np.bincount(truth * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve from scores and boolean labels (Mann-Whitney U / (n+ n-), ties = 1/2)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):  # average ranks over ties
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start:end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else 0.0


def classification_metrics(truth: np.ndarray, probabilities: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Every metric of a labelled prediction.

    Args:
        truth: (N,) true class indices.
        probabilities: (N, K) class probabilities (rows sum to 1); the prediction is the argmax.
        classes: the K class names.

    Returns:
        ``{"images", "accuracy", "balanced_accuracy", "macro_f1", "auc", "loss", "per_class": {name: {...}},
        "confusion_matrix": [[...]]}`` (plain floats and lists, JSON-ready; NaN where undefined).
    """
    truth = np.asarray(truth, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = len(classes)
    if probabilities.shape != (len(truth), count):
        raise UserError(f"probabilities of shape {probabilities.shape} do not match {len(truth)} images and "
                         f"{count} classes")
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth, predicted, count)
    support, predicted_count, hits = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    per_class, recalls, f1s = {}, [], []
    for k, name in enumerate(classes):
        precision = _ratio(hits[k], predicted_count[k])
        recall = _ratio(hits[k], support[k])
        f1 = _ratio(2 * precision * recall, precision + recall)
        auc = binary_auc(probabilities[:, k], truth == k)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "auc": auc,
                           "support": int(support[k]), "predicted": int(predicted_count[k])}
        if support[k] > 0:
            recalls.append(recall)
        if support[k] > 0 or predicted_count[k] > 0:
            f1s.append(f1)
    aucs = [v["auc"] for v in per_class.values() if not math.isnan(v["auc"])]
    eps = 1e-12
    chosen = probabilities[np.arange(len(truth)), truth]
    loss = float(-np.log(np.clip(chosen, eps, 1.0)).mean()) if len(truth) else math.nan
    return {
        "images": int(len(truth)),
        "accuracy": _ratio(hits.sum(), matrix.sum()),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else math.nan,
        "macro_f1": float(np.mean(f1s)) if f1s else math.nan,
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "loss": loss,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def write_metrics(metrics: dict[str, Any], classes: list[str], output: str | Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``per_class.csv``, ``confusion_matrix.csv`` and ``confusion_matrix.png``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": output / "metrics.json", "per_class": output / "per_class.csv",
             "confusion_csv": output / "confusion_matrix.csv", "confusion_png": output / "confusion_matrix.png"}
    clean = json.loads(json.dumps(metrics, default=float).replace("NaN", "null"))
    atomic_write_text(paths["metrics"], json.dumps(clean, indent=2) + "\n")
    rows: list[list[Any]] = [["class", "index", "precision", "recall", "f1", "auc", "support", "predicted"]]
    for index, name in enumerate(classes):
        values = metrics["per_class"][name]
        rows.append([name, index] + [_fmt(values[k]) for k in ("precision", "recall", "f1", "auc")]
                    + [values["support"], values["predicted"]])
    write_csv(paths["per_class"], rows)
    matrix = metrics["confusion_matrix"]
    write_csv(paths["confusion_csv"], [["true \\ predicted"] + classes]
              + [[name] + list(row) for name, row in zip(classes, matrix, strict=True)])
    save_confusion_matrix_png(np.asarray(matrix), classes, paths["confusion_png"],
                              title=f"accuracy {metrics['accuracy']:.3f}, balanced {metrics['balanced_accuracy']:.3f}")
    return paths


def _fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def confusion_matrix_figure(matrix: np.ndarray, classes: list[str], title: str = ""):
    """A matplotlib figure: cells coloured by row share (recall), labelled with counts."""
    from medseg_attn.plots import plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    size = min(16.0, 2.5 + 0.55 * len(classes))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if len(classes) <= 30:
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class (recall)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def save_confusion_matrix_png(matrix: np.ndarray, classes: list[str], path: str | Path, title: str = "") -> Path:
    """The confusion matrix as a PNG (written atomically)."""
    from medseg_attn.plots import plt

    fig = confusion_matrix_figure(matrix, classes, title)
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)


def confusion_matrix_image(matrix: np.ndarray, classes: list[str], title: str = "") -> np.ndarray:
    """(H, W, 3) uint8 rendering of the confusion matrix (for TensorBoard)."""
    from medseg_attn.plots import plt

    fig = confusion_matrix_figure(matrix, classes, title)
    try:
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    finally:
        plt.close(fig)


def save_classification_curves(history: list[dict], path: str | Path) -> Path:
    """Training and validation loss, and validation accuracy / balanced accuracy / macro F1 / AUC, per epoch."""
    from medseg_attn.plots import plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [row["epoch"] for row in history]
    left.plot(epochs, [row["train_loss"] for row in history], label="training loss")
    validated = [row for row in history if row.get("val_loss") is not None]
    if validated:
        left.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "k-o", markersize=3,
                  label="validation loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    for key, style in (("val_accuracy", "-o"), ("val_balanced_accuracy", "-s"), ("val_macro_f1", "--"),
                       ("val_auc", ":")):
        points = [(r["epoch"], r[key]) for r in validated if r.get(key) is not None]
        if points:
            right.plot(*zip(*points, strict=True), style, markersize=3, label=key[4:].replace("_", " "))
    if validated:
        right.legend(fontsize=8)
    right.set_ylim(0.0, 1.02)
    right.set_xlabel("epoch")
    right.set_ylabel("validation")
    right.grid(alpha=0.3)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    finally:
        plt.close(fig)
