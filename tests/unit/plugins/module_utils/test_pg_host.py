"""pg_host: the cgroup walk postgresql_info does on a host, on a made-up cgroup tree."""

from ansible_collections.headroom.pg.plugins.module_utils import pg_host


def test_the_cgroup_path_of_each_hierarchy():
    lines = ["12:memory:/docker/abc", "4:cpu,cpuacct:/docker/abc/x", "0::/system.slice/pg.service"]
    assert pg_host._cgroup_path(lines, "memory") == "/docker/abc"
    assert pg_host._cgroup_path(lines, "cpu") == "/docker/abc/x"
    assert pg_host._cgroup_path(lines, "") == "/system.slice/pg.service"
    assert pg_host._cgroup_path(lines, "pids") is None


def test_walk_up_reads_every_level_to_the_root(tmp_path):
    for level, value in [("", "max"), ("/a", "2147483648"), ("/a/b", "max")]:
        (tmp_path / level.lstrip("/")).mkdir(parents=True, exist_ok=True)
        (tmp_path / level.lstrip("/") / "memory.max").write_text(value + "\n")
    (tmp_path / "a" / "cpu.max").write_text("150000 100000\n")
    assert pg_host._walk_up(str(tmp_path), "/a/b", "memory.max") == ["max", "2147483648", "max"]
    assert pg_host._walk_up(str(tmp_path), "/a/b", "cpu.max") == ["150000 100000"]


def test_walk_up_joins_quota_and_period(tmp_path):
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "cpu.cfs_period_us").write_text("100000\n")
    assert pg_host._walk_up(str(tmp_path), "/", "cpu.cfs_quota_us", "cpu.cfs_period_us") == ["-1 100000"]


def test_cluster_names_take_either_version_spelling():
    assert pg_host.cluster_key({"version": "15", "cluster": "main"}) == "15/main"
    assert pg_host.cluster_key({"version": 17, "cluster": "x"}) == "17/x"


def test_resources_of_this_process_have_the_shape_the_filter_reads():
    found = pg_host.resources()
    assert found["memory"] > 0 and found["cpus"] >= 1
    assert set(found) == {"memory", "cpus", "cgroup_memory_limits", "cgroup_cpu_limits"}
