# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup headroom.pg.role_defaults: the defaults of roles of this collection, merged."""

DOCUMENTATION = r"""
name: role_defaults
author: headroom contributors (@headroom)
version_added: 0.1.0
short_description: The defaults of headroom's roles, merged in the order given
description:
  - Reads C(defaults/main.yml) of each named role of this collection and merges them, later roles winning.
  - The fleet plan counts a variable the inventory leaves out as the role that uses it would; role defaults are
    not host variables, so connection_budget takes them from here.
options:
  _terms:
    description: Role names of this collection.
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: Plan with the roles' defaults
  ansible.builtin.set_fact:
    defaults: "{{ lookup('headroom.pg.role_defaults', 'postgresql', 'postgresql_tuning', 'pgbouncer') }}"
"""

RETURN = r"""
_raw:
  description: One mapping, every role's defaults merged.
  type: list
  elements: dict
"""

import yaml
from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase
from ansible_collections.headroom.pg.plugins.plugin_utils.layout import ROLES_DIR


class LookupModule(LookupBase):
    """Every named role's defaults, merged."""

    def run(self, terms, variables=None, **kwargs):
        merged = {}
        for role in terms:
            path = ROLES_DIR / str(role) / "defaults" / "main.yml"
            if not path.is_file():
                raise AnsibleLookupError(f"headroom.pg.role_defaults: this collection has no role {role!r} ({path})")
            merged.update(yaml.safe_load(path.read_text()) or {})
        return [merged]
