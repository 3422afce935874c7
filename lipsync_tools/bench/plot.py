"""The comparison as one PNG: per-component stacked bars per mode, and the concurrency scaling curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Distinct, colour-blind-safe colours (Okabe-Ito + greys), one per component in COMPONENTS order.
_COLOURS = (
    "#999999",
    "#E69F00",
    "#56B4E9",
    "#009E73",
    "#F0E442",
    "#CC79A7",
    "#0072B2",
    "#D55E00",
    "#000000",
    "#DDDDDD",
)


def check_plotting() -> None:
    """Raise :class:`~lipsync_tools.errors.BackendUnavailableError` when matplotlib (the ``plot`` extra) is
    missing: called before a run of minutes, not after it."""
    _matplotlib()


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(
            f"--plot draws with matplotlib, which cannot be imported ({error}); install the extra: "
            "pip install 'lipsync-tools[plot]', or drop --plot (--json and --markdown need nothing more)"
        ) from error
    return matplotlib


def write_plot(result: dict[str, Any], path: Path) -> Path:
    """Draw ``result`` into ``path`` (PNG, ~100 KB) with matplotlib's Agg backend; returns ``path``."""
    matplotlib = _matplotlib()
    matplotlib.use("Agg")  # no display needed; must precede pyplot's import
    import matplotlib.pyplot as plt

    modes: dict[str, Any] = result["modes"]
    names = list(modes)
    components: list[str] = result["components"]
    fig, (bars, zoom, curve) = plt.subplots(
        1, 3, figsize=(15, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.1]}
    )
    # Left: the whole frame; middle: the same bars without the model, where the modes differ.
    for axis, shown in ((bars, components), (zoom, [c for c in components if c != "model inference"])):
        bottoms = [0.0] * len(names)
        for label in shown:
            k = components.index(label)
            values = [max(0.0, float(modes[m]["stages"][label]["median_ms"] or 0.0)) for m in names]
            axis.bar(
                names,
                values,
                bottom=bottoms,
                label=label,
                color=_COLOURS[k % len(_COLOURS)],
                edgecolor="white",
                linewidth=0.5,
            )
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        for x, m in enumerate(names):
            if axis is bars:
                e2e = modes[m]["end_to_end"]["median_ms"] or 0.0
                text = f"{e2e:.1f} ms\n{modes[m]['fps']:.1f} FPS"
            else:
                text = f"{bottoms[x]:.1f} ms"
            axis.text(x, bottoms[x], text, ha="center", va="bottom", fontsize=8)
        axis.set_ylim(0, max(bottoms) * 1.25 if max(bottoms) > 0 else 1)
    bars.set_ylabel("median ms per frame (one client)")
    bars.set_title("Where a frame's time goes")
    zoom.set_title("The same without model inference")
    handles, labels = bars.get_legend_handles_labels()
    zoom.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper right")

    for m, points in result["scaling"].items():
        clients = [p["clients"] for p in points]
        curve.plot(clients, [p["total_fps"] for p in points], marker="o", label=f"{m}: total")
        curve.plot(
            clients,
            [p["per_client_fps"] for p in points],
            marker=".",
            linestyle="--",
            label=f"{m}: per client",
            color=curve.lines[-1].get_color(),
        )
    curve.set_xscale("log", base=2)
    curve.set_xticks(sorted({p["clients"] for pts in result["scaling"].values() for p in pts}))
    curve.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    curve.set_xlabel("concurrent clients")
    curve.set_ylabel("frames per second")
    curve.set_title("Concurrency scaling")
    curve.grid(alpha=0.3)
    curve.legend(fontsize=7)
    machine = result["machine"]
    fig.suptitle(
        f"lipsync bench --compare: {result['input']['width']}x{result['input']['height']}, "
        f"{machine['cpu']}, {machine['cores_logical']} cores, {machine['gpu'] or 'no GPU'}",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=80, format="png")  # the path may be a temporary name (output.atomic_path)
    finally:
        plt.close(fig)
    return path
