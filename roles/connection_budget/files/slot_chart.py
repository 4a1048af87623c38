"""Draw slot usage per server from capacity.json: used, free and reserved slots as stacked bars.

Usage: slot_chart.py CAPACITY_JSON OUTPUT_PNG   (needs matplotlib, pinned in requirements.txt)
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a controller
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    with open(source, encoding="utf-8") as handle:
        servers = json.load(handle)["servers"]
    names = list(servers)
    used = [servers[n]["used"] for n in names]
    free = [max(servers[n]["free"], 0) for n in names]
    reserved = [servers[n]["reserved"] for n in names]
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 4.5))
    axes.bar(names, used, label="used", color="#d95f02")
    axes.bar(names, free, bottom=used, label="free", color="#1b9e77")
    axes.bar(names, reserved, bottom=[u + f for u, f in zip(used, free)], label="reserved", color="#7570b3")
    for index, name in enumerate(names):
        share = servers[name]["used_share"]
        axes.text(index, used[index] + free[index] + reserved[index], f"{share:.0%}", ha="center", va="bottom")
    axes.set_ylabel("connection slots (max_connections)")
    axes.set_title("Slot usage per server")
    axes.legend()
    plt.setp(axes.get_xticklabels(), rotation=30, ha="right")
    figure.tight_layout()
    figure.savefig(target, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
