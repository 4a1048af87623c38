"""pgpool_status and pgpool_live_diff: SHOW pool_status compared with what pgpool.conf holds."""

from ansible_collections.headroom.pg.plugins.filter.pgpool_live import FilterModule, pgpool_live_diff, pgpool_status

# As psql -At prints SHOW pool_status on pgpool-II 4.3 (booleans 1/0, weights as floats).
STATUS = """num_init_children|93|# of children initially pre-forked
max_pool|1|max # of connection pool per child
enable_pool_hba|1|if true, use pool_hba.conf for client authentication
backend_weight0|1.000000|weight of backend #0
client_idle_limit|0|idle time in seconds
backend_clustering_mode|1|clustering mode
"""
RESTART = ["num_init_children", "max_pool", "backend_hostname*"]


def test_the_plugin_registers_both_filters():
    assert set(FilterModule().filters()) == {"pgpool_status", "pgpool_live_diff"}


def test_status_rows_become_a_dict():
    assert pgpool_status(STATUS)["backend_weight0"] == "1.000000"


def test_written_values_match_their_live_form():
    planned = {"num_init_children": "93", "max_pool": 1, "enable_pool_hba": True, "backend_weight0": 1,
               "client_idle_limit": 0, "health_check_password": ""}
    assert pgpool_live_diff(pgpool_status(STATUS), planned, RESTART) == []


def test_differences_say_whether_a_restart_is_needed():
    planned = {"num_init_children": 40, "client_idle_limit": 300, "enable_pool_hba": False}
    assert pgpool_live_diff(pgpool_status(STATUS), planned, RESTART) == [
        {"setting": "num_init_children", "planned": "40", "live": "93", "restart": True},
        {"setting": "client_idle_limit", "planned": "300", "live": "0", "restart": False},
        {"setting": "enable_pool_hba", "planned": "False", "live": "1", "restart": False},
    ]


def test_skipped_settings_are_not_compared():
    planned = {"backend_clustering_mode": "streaming_replication"}
    assert pgpool_live_diff(pgpool_status(STATUS), planned, RESTART, ["backend_clustering_mode"]) == []


def test_weights_are_live_as_their_share_of_the_sum():
    # pgpool-II 4.3 with two backends of weight 1 shows each as 0.500000.
    status = {"backend_weight0": "0.500000", "backend_weight1": "0.500000"}
    assert pgpool_live_diff(status, {"backend_weight0": 1, "backend_weight1": 1}, RESTART) == []
    assert pgpool_live_diff(status, {"backend_weight0": 1, "backend_weight1": 3}, RESTART) == [
        {"setting": "backend_weight0", "planned": "1", "live": "0.500000", "restart": False},
        {"setting": "backend_weight1", "planned": "3", "live": "0.500000", "restart": False},
    ]
