"""What a running pgpool-II says about itself, compared with the plan of the pgpool role.

``pgpool_status`` turns the rows of ``SHOW pool_status`` (``psql -At``: item|value|description)
into a dict. ``pgpool_live_diff`` lists the planned settings whose live value differs, each
marked ``restart`` when a reload cannot change it. SHOW pool_status prints booleans as 1/0 and
backend weights as floats (checked on 4.3 and 4.6), each as its share of the sum of weights (seen
on 4.3 with two backends), so values are compared in that form;
settings it does not show (passwords, enums it prints as numbers) are not compared.
"""

from ansible.errors import AnsibleFilterError

_BOOLEANS = {"on": "1", "off": "0", "true": "1", "false": "0", "yes": "1", "no": "0"}


def pgpool_status(stdout):
    """``SHOW pool_status`` rows (``item|value|description`` lines) as ``{item: value}``."""
    if not isinstance(stdout, str):
        raise AnsibleFilterError(f"pgpool_status: expected the text psql printed, got {type(stdout).__name__}")
    status = {}
    for line in stdout.splitlines():
        item, sep, rest = line.partition("|")
        if sep:
            status[item] = rest.partition("|")[0]
    return status


def _normal(value):
    text = ("1" if value else "0") if isinstance(value, bool) else str(value).strip()
    text = _BOOLEANS.get(text.lower(), text)
    try:
        return repr(float(text))
    except ValueError:
        return text


def _weight_shares(settings):
    """Each planned ``backend_weightN`` as its share of the sum, the form SHOW pool_status prints.

    pgpool-II normalises the weights when it loads them (4.3: weights 1 and 1 show as 0.500000).
    """
    weights = {name: float(value) for name, value in settings.items() if name.startswith("backend_weight")}
    total = sum(weights.values())
    return {name: weight / total for name, weight in weights.items()} if total > 0 else {}


def _same(name, planned, live, shares):
    if name in shares:
        try:
            # SHOW pool_status prints six decimals.
            return abs(shares[name] - float(live)) <= 5e-7
        except ValueError:
            return False
    return _normal(planned) == _normal(live)


def _restart(name, restart_only):
    return any(name == entry or (entry.endswith("*") and name.startswith(entry[:-1])) for entry in restart_only)


def pgpool_live_diff(status, settings, restart_only, skip=()):
    """Planned settings whose live value differs: ``[{setting, planned, live, restart}]``.

    ``status``: the dict of pgpool_status; ``settings``: what pgpool.conf holds; ``restart_only``:
    names (a trailing ``*`` matches a prefix) a reload does not change; ``skip``: names not compared.
    """
    if not isinstance(status, dict) or not isinstance(settings, dict):
        raise AnsibleFilterError("pgpool_live_diff: status and settings must be dicts")
    out = []
    shares = _weight_shares(settings)
    for name, planned in settings.items():
        if name in skip or name not in status:
            continue
        if not _same(name, planned, status[name], shares):
            out.append({"setting": name, "planned": str(planned), "live": status[name],
                        "restart": _restart(name, restart_only)})
    return out


class FilterModule:
    """Reading a live pgpool-II."""

    def filters(self):
        return {"pgpool_status": pgpool_status, "pgpool_live_diff": pgpool_live_diff}
