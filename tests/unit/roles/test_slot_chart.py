"""capacity.yml's chart, read back: each bar's colour covers an area proportional to its number."""

import importlib.util
import json
from pathlib import Path

import matplotlib.image
import numpy
import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "roles" / "connection_budget" / "files" / "slot_chart.py"
spec = importlib.util.spec_from_file_location("slot_chart", SCRIPT)
slot_chart = importlib.util.module_from_spec(spec)
spec.loader.exec_module(slot_chart)


def server(used, free, reserved):
    total = used + free + reserved
    return {"used": used, "free": free, "reserved": reserved, "used_share": used / (total - reserved)}


def pool(database, held, size, waiting):
    return {"unit": "pgbouncer.service", "database": database, "user": "app", "server_connections": held,
            "pool_size": size, "clients_waiting": waiting}


def areas(tmp_path, report):
    """Pixels of each of the chart's colours, in its left (servers) and right (pools) half."""
    source, target = tmp_path / "capacity.json", tmp_path / "capacity.png"
    source.write_text(json.dumps(report))
    slot_chart.main(source, target)
    image = matplotlib.image.imread(target)[:, :, :3]
    half = image.shape[1] // 2
    counts = {}
    for name, colour in slot_chart.COLOURS.items():
        rgb = numpy.array([int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5)])
        match = numpy.all(numpy.abs(image - rgb) < 1.5 / 255, axis=2)
        counts[name] = (int(match[:, :half].sum()), int(match[:, half:].sum()))
    return counts


REPORT = {
    "servers": {"db1": server(30, 60, 10), "db2": server(80, 10, 10)},
    "poolers": {"pgb1": {"pools": [pool("appdb", 5, 20, 0), pool("reports", 20, 20, 12)]}},
}


def test_slots_per_server_are_drawn_in_proportion(tmp_path):
    counts = areas(tmp_path, REPORT)
    used, free, reserved = (counts[name][0] for name in ("used", "free", "reserved"))
    # Both servers' bars have the same width: the areas add up the slots, 110 : 70 : 20.
    assert used / free == pytest.approx(110 / 70, rel=0.04)
    assert reserved / free == pytest.approx(20 / 70, rel=0.06)


def test_pools_show_held_connections_room_and_waiting_clients_in_proportion(tmp_path):
    counts = areas(tmp_path, REPORT)
    held, room, waiting = (counts[name][1] for name in ("pool_held", "pool_room", "waiting"))
    # 5 + 20 held, 15 + 0 room, 0 + 12 waiting, in bars of one width.
    assert held / room == pytest.approx(25 / 15, rel=0.05)
    assert waiting / held == pytest.approx(12 / 25, rel=0.05)
    assert counts["used"][1] == 0  # the servers' colours stay in their panel


def test_no_waiting_clients_draw_no_waiting_bar(tmp_path):
    calm = {**REPORT, "poolers": {"pgb1": {"pools": [pool("appdb", 5, 20, 0)]}}}
    counts = areas(tmp_path, calm)
    one_connection = counts["pool_held"][1] / 5
    assert counts["waiting"][1] < 0.25 * one_connection  # the legend's swatch only, no bar
