"""Draw capacity.json: slots per server and connections per PgBouncer pool.

Left, per server: used, free and reserved slots stacked to max_connections, with the share of
the ordinary slots in use on top. Right, per pool (PgBouncer host, unit, database/user): the
server connections it holds, the room left in its pool (pool_size + reserve_pool), and beside
them the clients waiting for a server connection. The colours are fixed (COLOURS), so a test
can read the picture back and measure each bar.

Usage: slot_chart.py CAPACITY_JSON OUTPUT_PNG   (needs matplotlib, pinned in requirements.txt)
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display on a controller
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {
    "used": "#d95f02",
    "free": "#1b9e77",
    "reserved": "#7570b3",
    "pool_held": "#66a61e",
    "pool_room": "#e6ab02",
    "waiting": "#e7298a",
}


def _legend_above_the_bars(axes, tallest, columns):
    """Room above the tallest bar for the legend, so it never hides a bar."""
    axes.set_ylim(0, max(tallest, 1) * (1.3 + 0.15 * (3 // columns)))
    axes.legend(loc="upper left", ncol=columns, fontsize="small")


def _servers(axes, servers):
    names = list(servers)
    used = [servers[n]["used"] for n in names]
    free = [max(servers[n]["free"], 0) for n in names]
    reserved = [servers[n]["reserved"] for n in names]
    axes.bar(names, used, label="used", color=COLOURS["used"])
    axes.bar(names, free, bottom=used, label="free", color=COLOURS["free"])
    axes.bar(names, reserved, bottom=[u + f for u, f in zip(used, free)], label="reserved", color=COLOURS["reserved"])
    for index, name in enumerate(names):
        axes.text(index, used[index] + free[index] + reserved[index], f"{servers[name]['used_share']:.0%}",
                  ha="center", va="bottom")
    axes.set_ylabel("connection slots (max_connections)")
    axes.set_title("Slots per server")
    _legend_above_the_bars(axes, max(u + f + r for u, f, r in zip(used, free, reserved)), 3)
    plt.setp(axes.get_xticklabels(), rotation=30, ha="right")


def _pools(axes, poolers):
    rows = [(host, pool) for host, report in poolers.items() for pool in report.get("pools", [])]
    if not rows:
        axes.set_axis_off()
        axes.text(0.5, 0.5, "no PgBouncer pools", ha="center", va="center")
        return
    labels = [f"{host} {pool['unit'].removesuffix('.service')}\n{pool['database']}/{pool['user']}" for host, pool in rows]
    held = [pool["server_connections"] for _host, pool in rows]
    room = [max(pool.get("pool_size", 0) - pool["server_connections"], 0) for _host, pool in rows]
    waiting = [pool["clients_waiting"] for _host, pool in rows]
    where = range(len(rows))
    axes.bar([i - 0.2 for i in where], held, width=0.4, label="server connections", color=COLOURS["pool_held"])
    axes.bar([i - 0.2 for i in where], room, width=0.4, bottom=held, label="room in pool", color=COLOURS["pool_room"])
    axes.bar([i + 0.2 for i in where], waiting, width=0.4, label="clients waiting", color=COLOURS["waiting"])
    axes.set_xticks(list(where), labels)
    axes.set_ylabel("connections")
    axes.set_title("PgBouncer pools")
    _legend_above_the_bars(axes, max([h + r for h, r in zip(held, room)] + waiting), 1)
    plt.setp(axes.get_xticklabels(), rotation=30, ha="right")


def main(source, target):
    with open(source, encoding="utf-8") as handle:
        report = json.load(handle)
    servers, poolers = report["servers"], report.get("poolers", {})
    bars = len(servers) + sum(len(p.get("pools", [])) for p in poolers.values())
    figure, (left, right) = plt.subplots(1, 2, figsize=(max(9, 0.8 * bars + 5), 5))
    _servers(left, servers)
    _pools(right, poolers)
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
