"""`coordconv evaluate`: the full-canvas (version 2) models judged as the repository serves them,
with onnxruntime on the exported files (so Triton serving the same repository gives the same
numbers):

- render v2: IoU at every integer centre 0..63 on both axes (4096, squares clipped at the
  border) and at 10,000 seeded real-valued points away from .5 ties (the square at the nearest
  integer centre), and the values IoU at 0.5 cannot see (training.metrics.render_values: the
  mean background and square values, the largest per-pixel error, with the bounds of
  training.metrics); pixel v2: accuracy at the same;
- locate v2: error over all 4096 squares and all 4096 one-hot images;
- the locate confidence: share `ok` (confidence >= the model's threshold) and AUROC against the
  clean images, on clean, slightly noisy and corrupted sets (blank, all-white, two squares,
  salt-and-pepper 5% and 20%, Gaussian sigma 0.3, 5x5 and 15x15 squares, a disc of radius 5,
  uniform noise). Every set is generated here with a fixed seed and never trained on.
- what the confidence costs: locate v2 with and without its confidence output, batch 64.

Writes OUT/full_canvas.md and .json.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from coordconv.contract import CANVAS
from training import data, metrics
from training.cpu import session

OK_THRESHOLD = 0.5  # the service's default verdict: confidence >= this is "ok"
SET_SIZE = 1000
Images = npt.NDArray[np.float32]


def _grid() -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:CANVAS, 0:CANVAS]
    return xs, ys


def boxes(centres: np.ndarray, half: int) -> Images:
    """Filled squares of side 2 * half + 1 at integer centres, clipped."""
    xs, ys = _grid()
    c = np.rint(centres).astype(int)
    inside = (np.abs(xs[None] - c[:, 0, None, None]) <= half) & (
        np.abs(ys[None] - c[:, 1, None, None]) <= half
    )
    return inside.astype(np.float32)


def discs(centres: np.ndarray, radius: float) -> Images:
    xs, ys = _grid()
    c = centres
    d2 = (xs[None] - c[:, 0, None, None]) ** 2 + (ys[None] - c[:, 1, None, None]) ** 2
    return (d2 <= radius**2).astype(np.float32)


def clean_sets() -> dict[str, tuple[Images, np.ndarray]]:
    """The 4096 squares and 4096 one-hots of every integer centre, and the same under Gaussian
    noise of sigma 0.05: images and their true centres."""
    c = data.full_centres()
    clean = np.concatenate([data.squares(c), data.onehots(c)])
    truth = np.concatenate([c, c])
    rng = np.random.default_rng(101)
    noisy = np.clip(clean + rng.normal(0, 0.05, clean.shape), 0, 1).astype(np.float32)
    return {"clean": (clean, truth), "Gaussian noise sigma 0.05": (noisy, truth)}


def corrupted_sets(n: int = SET_SIZE) -> dict[str, Images]:
    """Images that do not show exactly one 9x9 square or one lit pixel, each from its own seed."""
    sets: dict[str, Images] = {}
    rng = np.random.default_rng(202)
    centres = rng.integers(4, 60, size=(n, 2)).astype(np.float32)
    squares = data.squares(centres)
    sets["blank"] = np.zeros((n, CANVAS, CANVAS), np.float32)
    sets["all-white"] = np.ones((n, CANVAS, CANVAS), np.float32)
    second = rng.integers(0, CANVAS, size=(n, 2)).astype(np.float32)
    far = np.abs(second - centres).max(axis=1) >= 10  # two separate squares
    while not far.all():
        second[~far] = rng.integers(0, CANVAS, size=(int((~far).sum()), 2))
        far = np.abs(second - centres).max(axis=1) >= 10
    sets["two squares"] = np.maximum(squares, data.squares(second))
    for p in (0.05, 0.20):
        flip = rng.random(squares.shape) < p
        salt = rng.random(squares.shape) < 0.5
        sets[f"salt-and-pepper {p:.0%}"] = np.where(flip, salt, squares).astype(np.float32)
    sets["Gaussian noise sigma 0.3"] = np.clip(
        squares + rng.normal(0, 0.3, squares.shape), 0, 1
    ).astype(np.float32)
    sets["5x5 squares"] = boxes(centres, 2)
    sets["15x15 squares"] = boxes(centres, 7)
    sets["disc of radius 5"] = discs(centres, 5.0)
    sets["uniform noise"] = rng.random(squares.shape, dtype=np.float32)
    return sets


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (Mann-Whitney)."""
    scores = np.concatenate([positive, negative])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    n_pos, n_neg = len(positive), len(negative)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def _run(sess: Any, x: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
    inp = sess.get_inputs()[0].name
    outs = [sess.run(names, {inp: x[i : i + 256]}) for i in range(0, len(x), 256)]
    return [np.concatenate(col) for col in zip(*outs, strict=True)]


def evaluate_render(path: Path) -> dict[str, Any]:
    s = session(path)
    c = data.full_centres()
    (img,) = _run(s, c)
    ious = metrics.iou(img, data.squares(c))
    pts = data.subpixel_points(10_000, seed=7)
    (img2,) = _run(s, pts)
    ious2 = metrics.iou(img2, data.squares(pts))
    values = metrics.render_values(img, data.squares(c))
    return {
        "centres": len(c),
        "min_iou_centres": float(ious.min()),
        "centres_below_0.99": int((ious < 0.99).sum()),
        "real_points": len(pts),
        "min_iou_real": float(ious2.min()),
        "real_below_0.99": int((ious2 < 0.99).sum()),
        **{f"{k}_centres": v for k, v in values.items()},
        "value_problem": metrics.render_value_problem(values, float(ious.mean())),
    }


def evaluate_pixel(path: Path) -> dict[str, Any]:
    s = session(path)
    c = data.full_centres()
    pts = data.subpixel_points(10_000, seed=7)
    (maps,) = _run(s, c)
    (maps2,) = _run(s, pts)
    return {
        "accuracy_centres": metrics.accuracy(maps, data.pixel_index(c)),
        "accuracy_real": metrics.accuracy(maps2, data.pixel_index(pts)),
    }


def evaluate_locate(path: Path, cost_seconds: float = 2.0) -> dict[str, Any]:
    """Locate v2 over every clean and corrupted set; `cost_seconds`: how long the confidence's
    cost is timed (confidence_cost)."""
    s = session(path)
    names = [o.name for o in s.get_outputs()]
    if "confidence" not in names:
        raise ValueError(f"{path}: no confidence output (outputs: {names})")
    out: dict[str, Any] = {"sets": {}}
    clean = clean_sets()
    images, truth = clean["clean"]
    coords, conf = _run(s, images, ["coords", "confidence"])
    err = metrics.errors_px(coords, truth)
    n = len(truth) // 2
    out["error"] = {
        "squares_mean_px": float(err[:n].mean()),
        "squares_max_px": float(err[:n].max()),
        "onehots_mean_px": float(err[n:].mean()),
        "onehots_max_px": float(err[n:].max()),
    }
    clean_conf = conf
    for name, (imgs, _) in clean.items():
        c = conf if name == "clean" else _run(s, imgs, ["coords", "confidence"])[1]  # run above
        out["sets"][name] = {
            "images": len(imgs),
            "ok": float((c >= OK_THRESHOLD).mean()),
            "median_confidence": float(np.median(c)),
            "kind": "clean",
        }
    for name, imgs in corrupted_sets().items():
        _, c = _run(s, imgs, ["coords", "confidence"])
        out["sets"][name] = {
            "images": len(imgs),
            "ok": float((c >= OK_THRESHOLD).mean()),
            "median_confidence": float(np.median(c)),
            "auroc": auroc(clean_conf, c),
            "kind": "corrupted",
        }
    out["confidence_cost"] = confidence_cost(path, cost_seconds)
    return out


def confidence_cost(path: Path, seconds: float = 2.0) -> dict[str, float]:
    """Images/s of locate v2 at batch 64 with its confidence output and with the graph cut to
    coords only (onnxruntime drops the nodes only the confidence needs), best of three."""
    import onnx

    proto = onnx.load(str(path))
    keep = [o for o in proto.graph.output if o.name != "confidence"]
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    with_conf, without = session(path), session(proto.SerializeToString())
    x = data.squares(data.full_centres()[:64])

    def rate(run: Callable[[], Any]) -> float:
        run()
        best = 0.0
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / 3:
                run()
                n += 64
            best = max(best, n / (time.perf_counter() - t0))
        return best

    a = rate(lambda: with_conf.run(None, {"image": x}))
    b = rate(lambda: without.run(None, {"image": x}))
    return {"with_confidence": a, "without": b, "ratio": a / b}


def evaluate(repo: Path, out: Path, version: str = "2") -> dict[str, Any]:
    result = {
        "render": evaluate_render(repo / "render" / version / "model.onnx"),
        "pixel": evaluate_pixel(repo / "pixel" / version / "model.onnx"),
        "locate": evaluate_locate(repo / "locate" / version / "model.onnx"),
        "ok_threshold": OK_THRESHOLD,
        "generated": time.strftime("%Y-%m-%d"),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "full_canvas.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "full_canvas.md").write_text(report(result))
    return result


def report(r: dict[str, Any]) -> str:
    rd, px, lo = r["render"], r["pixel"], r["locate"]
    e = lo["error"]
    lines = [
        "# Full-canvas models (version 2) and the locate confidence",
        "",
        f"Generated by `coordconv evaluate` on {r['generated']}: onnxruntime on the exported "
        "files of `models/*/2/`. Every evaluation set is generated with a fixed seed and never "
        f"trained on. `ok` means confidence >= {r['ok_threshold']}.",
        "",
        "| model | measured on | result | goal |",
        "|---|---|---|---|",
        f"| render v2 | all {rd['centres']:,} integer centres (border squares clipped) | min IoU "
        f"{rd['min_iou_centres']:.3f} ({rd['centres_below_0.99']} below 0.99) | IoU >= 0.99 |",
        f"| render v2 | {rd['real_points']:,} seeded real-valued points | min IoU "
        f"{rd['min_iou_real']:.3f} ({rd['real_below_0.99']} below 0.99) | IoU >= 0.99 |",
        *(
            [
                f"| render v2 | the values at all {rd['centres']:,} centres | background mean "
                f"{rd['background_mean_centres']:.2g}, square mean "
                f"{rd['square_mean_centres']:.4f}, largest per-pixel error "
                f"{rd['max_pixel_error_centres']:.3f} | background <= "
                f"{metrics.BACKGROUND_MEAN_MAX}, square >= {metrics.SQUARE_MEAN_MIN} |"
            ]
            if "background_mean_centres" in rd
            else []
        ),
        f"| pixel v2 | all 4,096 integer centres / 10,000 real points | accuracy "
        f"{px['accuracy_centres']:.2%} / {px['accuracy_real']:.2%} | 100% |",
        f"| locate v2 | all 4,096 squares | mean {e['squares_mean_px']:.3f} px, max "
        f"{e['squares_max_px']:.3f} px | mean <= 0.5, max <= 1 |",
        f"| locate v2 | all 4,096 one-hot images | mean {e['onehots_mean_px']:.3f} px, max "
        f"{e['onehots_max_px']:.3f} px | mean <= 0.5, max <= 1 |",
        "",
        "The confidence on each set (AUROC: clean images against that set):",
        "",
        "| set | images | ok | median confidence | AUROC | goal |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in lo["sets"].items():
        goal = ">= 99% ok" if s["kind"] == "clean" else "<= 1% ok, AUROC >= 0.99"
        auc = f"{s['auroc']:.4f}" if "auroc" in s else ""
        lines.append(
            f"| {name} | {s['images']:,} | {s['ok']:.2%} | {s['median_confidence']:.3f} | "
            f"{auc} | {goal} |"
        )
    c = lo["confidence_cost"]
    lines += [
        "",
        f"What the confidence costs (onnxruntime, CPU, batch 64): {c['with_confidence']:,.0f} "
        f"images/s with it, {c['without']:,.0f} without: ratio {c['ratio']:.2f} (goal >= 0.8).",
        "",
    ]
    return "\n".join(lines)
