"""Saving over time, every configuration of a group on one chart
(python3-matplotlib).  One PNG with a panel per (workload, ksmd rate,
THP mode), and one PNG per panel."""

import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MiB = 1 << 20
STYLE = {"stock": ("tab:red", "-"), "targeted": ("tab:blue", "-"),
         "proxy": ("tab:green", "--"), "ideal": ("black", ":"),
         "nomanage": ("tab:purple", "-.")}
LABEL = {"stock": "stock (merge=on)", "targeted": "memdedup targeted",
         "proxy": "memdedup, 1 process (board proxy)",
         "ideal": "ideal (hand-placed)", "nomanage": "memdedup manage-thp=off"}


def _groups(result):
    groups = {}
    for r in result["runs"]:
        if "samples" in r:
            groups.setdefault((r["workload"], r["rate"], r["thp"]),
                              []).append(r)
    return groups


def _panel(ax, key, runs, page, meta_expected=None):
    workload, rate, thp = key
    stock_final = None
    for r in runs:
        if r["config"] == "stock":
            stock_final = r["summary"]["final_saving_bytes"] / MiB
    for r in runs:
        color, ls = STYLE.get(r["config"], ("gray", "-"))
        t = [s["t"] for s in r["samples"]]
        y = [s["saving_pages"] * page / MiB for s in r["samples"]]
        ax.plot(t, y, color=color, linestyle=ls, linewidth=1.6,
                label=LABEL.get(r["config"], r["config"]))
    exp = meta_expected if workload != "guests" else None
    if exp:
        ax.axhline(exp["ideal_saving_pages"] * page / MiB, color="gray",
                   linewidth=0.7, linestyle="--")
        ax.text(0, exp["ideal_saving_pages"] * page / MiB,
                " every duplicate merged", color="gray", fontsize=7,
                va="bottom")
    if stock_final:
        ax.axhline(0.9 * stock_final, color="tab:red", linewidth=0.7,
                   alpha=0.5, linestyle=(0, (2, 3)))
        ax.text(0, 0.9 * stock_final, " 90% of stock", color="tab:red",
                fontsize=7, va="bottom", alpha=0.8)
    ax.set_title("%s, ksmd %s, THP %s" % (workload, rate, thp), fontsize=10)
    ax.set_xlabel("seconds since ksmd start")
    ax.set_ylabel("saved MiB (pages_sharing + RSS drop)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")


def plot(result, outdir, page=4096):
    groups = _groups(result)
    keys = sorted(groups, key=lambda k: (
        ["mixed", "volatile", "guests"].index(k[0])
        if k[0] in ("mixed", "volatile", "guests") else 9,
        k[1] != "1000/20", k[2] != "on"))
    paths = []
    cols = 2 if len(keys) > 1 else 1
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.2 * rows),
                             squeeze=False)
    for i, key in enumerate(keys):
        _panel(axes[i // cols][i % cols], key, groups[key], page,
               result["meta"].get("expected"))
    for j in range(len(keys), rows * cols):
        axes[j // cols][j % cols].axis("off")
    host = result["meta"]["host"]
    fig.suptitle("memdedup vs stock QEMU + KSM: saving over time\n"
                 "(%d cores, kernel %s)" % (host["cpus"], host["kernel"]),
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (4.2 * rows)))
    p = os.path.join(outdir, "saving.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    paths.append(p)
    for key in keys:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        _panel(ax, key, groups[key], page, result["meta"].get("expected"))
        fig.tight_layout()
        p = os.path.join(outdir, "saving-%s-%s-thp%s.png" % (
            key[0], key[1].replace("/", "-"), key[2]))
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
