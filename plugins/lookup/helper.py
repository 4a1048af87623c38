# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup headroom.pg.helper: the path of a helper headroom installs on its hosts."""

DOCUMENTATION = r"""
name: helper
author: headroom contributors (@headroom)
version_added: 0.1.0
short_description: The path of a helper headroom installs on managed hosts
description:
  - Without terms, the directory the pgbouncer and pgpool roles install their helpers in; with a helper's name, that
    helper's path.
  - The one place the roles and playbooks take it from.
options:
  _terms:
    description: Helper names (C(pgbouncer-console), C(pgbouncer-pause), C(pgpool-check-config), C(pgpool-psql)), or
      none for the directory.
    type: list
    elements: str
    required: false
"""

EXAMPLES = r"""
- name: Show PgBouncer's pools through the console helper
  ansible.builtin.command:
    argv: ["{{ lookup('headroom.pg.helper', 'pgbouncer-console') }}", pgbouncer.service, SHOW POOLS]
"""

RETURN = r"""
_raw:
  description: The directory, or one path per helper named.
  type: list
  elements: str
"""

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.headroom.pg.plugins.plugin_utils.layout import HELPER_DIR, HELPERS


class LookupModule(LookupBase):
    """The helper directory, or the path of each helper named."""

    def run(self, terms, variables=None, **kwargs):
        if not terms:
            return [HELPER_DIR]
        unknown = [term for term in terms if term not in HELPERS]
        if unknown:
            raise AnsibleLookupError(f"headroom.pg.helper: no helper {', '.join(unknown)}; known are {', '.join(HELPERS)}")
        return [f"{HELPER_DIR}/{term}" for term in terms]
