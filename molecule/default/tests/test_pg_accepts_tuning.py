"""The real server accepts whatever pg_tune writes, for the PostgreSQL installed on each test host.

hypothesis draws host sizes, CPUs, profiles, storage, demands and a few pins; each pg_tune
result is written as a configuration file in the container and read by the server binary
itself (``postgres -C``), which exits non-zero on an unknown name or a value outside the
parameter's range or units. ``-C`` does not check settings against each other (facts.md);
the unit tests cover those relations.
"""

import base64

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.headroom.pg.plugins.filter.pg_config import pg_conf_value
from ansible_collections.headroom.pg.plugins.filter.postgresql_sizing import pg_size_bytes, pg_tune
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

CHECK_FILE = "/tmp/headroom-tuning-check.conf"
MB = 1024**2


def render(settings_map):
    """postgresql.conf lines exactly as the role's template writes them (filter pg_conf_value)."""
    return "".join(f"{name} = {pg_conf_value(value, name)}\n" for name, value in settings_map.items())


def server_reads(host, version, text, *names):
    """Write ``text`` as a configuration file and ask the server binary for each of ``names``, one line each."""
    encoded = base64.b64encode(text.encode()).decode()
    server = (
        f"runuser -u postgres -- /usr/lib/postgresql/{version}/bin/postgres "
        f"-D /var/lib/postgresql/{version}/main -c config_file={CHECK_FILE}"
    )
    script = f"set -e; echo {encoded} | base64 -d > {CHECK_FILE}; chmod 644 {CHECK_FILE}"
    script += "".join(f"; {server} -C {name}" for name in names)
    return host.run("sh -c %s", script)  # testinfra quotes the argument


@pytest.fixture(scope="module")
def versions(host):
    """Major versions installed on the host that have a cluster to point -D at."""
    installed = host.check_output("ls /usr/lib/postgresql/").split()
    found = [int(v) for v in installed if v.isdigit() and host.file(f"/var/lib/postgresql/{v}/main").is_directory]
    assert found, f"no PostgreSQL cluster under /var/lib/postgresql for {installed}"
    return found


specs = st.fixed_dictionaries(
    {
        "memory": st.integers(min_value=512, max_value=1024 * 1024).map(lambda mb: mb * MB),
        "cpus": st.integers(min_value=1, max_value=96),
        "profile": st.sampled_from(["web", "oltp", "dw", "mixed", "desktop"]),
        "storage": st.sampled_from(["ssd", "hdd", "nvme", "san"]),
    },
    optional={
        "connection_demand": st.integers(min_value=0, max_value=300),
        "memory_fraction": st.sampled_from([0.25, 0.5, 0.8]),
        "overrides": st.sampled_from(
            [
                {"jit": "off"},
                {"work_mem": "16MB", "huge_pages": "off"},
                {"autovacuum_work_mem": -1},
                {"random_page_cost": 1.5},
            ]
        ),
    },
)


@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(data=st.data(), spec=specs)
def test_the_server_accepts_every_pg_tune_result(host, versions, data, spec):
    version = data.draw(st.sampled_from(versions), label="version")
    try:
        tuned = pg_tune({**spec, "version": version})
    except AnsibleFilterError:
        assume(False)  # a demand above the ceiling, or too little memory: refused before any file is written
    text = render(tuned)

    checked = server_reads(host, version, text, "max_connections", "shared_buffers")
    assert checked.rc == 0, f"{checked.stderr}\n{text}"
    max_connections, shared_buffers_blocks = checked.stdout.split()
    assert int(max_connections) == tuned["max_connections"]
    assert int(shared_buffers_blocks) * 8192 == pg_size_bytes(tuned["shared_buffers"], "8kB")


def test_the_check_fails_on_a_value_the_server_refuses(host, versions):
    tuned = pg_tune({"memory": "16GB", "cpus": 4, "version": versions[0], "profile": "web"})
    checked = server_reads(host, versions[0], render({**tuned, "work_mem": "lots"}), "work_mem")
    assert checked.rc != 0
    assert 'invalid value for parameter "work_mem"' in checked.stderr
