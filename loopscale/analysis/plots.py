"""What every figure shares: matplotlib without a display (Agg), log axes labelled at decades, PNG bytes."""

from __future__ import annotations

import io


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(plt, fig) -> bytes:
    """A figure as PNG (120 dpi, tight bounding box), closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def log_x(ax) -> None:
    """Log x axis labelled at decades only (minor labels collide over narrow ranges)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
