# -*- coding: utf-8 -*-
# Copyright: (c) headroom contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup headroom.pg.rendered_files: file entries whose templates are rendered on the controller."""

DOCUMENTATION = r"""
name: rendered_files
author: headroom contributors (@headroom)
version_added: 0.1.0
short_description: Render the templates of file entries on the controller and give each its SHA-1
description:
  - Each entry that names a C(template) is rendered with the task's variables, plus the entry's C(vars), as
    M(ansible.builtin.template) would render it, and comes back with C(checksum), the SHA-1 of the rendering (as
    the roles' reads report a file's). Its C(template) and C(vars) stay in the entry; the rendering does not, so a
    secret a template holds stays out of the facts.
  - Entries without a template come back as they are.
  - Filter M(headroom.pg.paths_to_write) then keeps the entries a read of the host found missing or different,
    so that a role writes only those and a converged host costs no round trip.
  - Each distinct template and C(vars) is rendered once per call.
options:
  _terms:
    description: File entries (mappings), or one list of them. An entry with C(template) may have C(vars), a
      mapping of extra variables for that template.
    type: list
    elements: raw
    required: true
"""

EXAMPLES = r"""
- name: Note which of the role's files differ from what the read found
  ansible.builtin.set_fact:
    files_to_write: >-
      {{ query('headroom.pg.rendered_files', [{'path': '/etc/app.ini', 'template': 'app.ini.j2', 'vars': {'port': 6432},
                                                'owner': 'root', 'group': 'root', 'mode': '0644'}])
         | headroom.pg.paths_to_write(read.paths) }}
"""

RETURN = r"""
_raw:
  description: The entries in order; each one with a template has C(checksum) added.
  type: list
  elements: dict
"""

import json
from collections.abc import Mapping

from ansible.errors import AnsibleLookupError
from ansible.plugins.loader import lookup_loader
from ansible.plugins.lookup import LookupBase
from ansible_collections.headroom.pg.plugins.filter.host_files import sha1_of


class LookupModule(LookupBase):
    """Each entry, a template's with the SHA-1 of its rendering."""

    def run(self, terms, variables=None, **kwargs):
        entries = terms[0] if len(terms) == 1 and isinstance(terms[0], list) else terms
        template = lookup_loader.get("ansible.builtin.template", loader=self._loader, templar=self._templar)
        checksums = {}
        out = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise AnsibleLookupError(f"headroom.pg.rendered_files: each entry must be a mapping, got {entry!r}")
            if "template" not in entry:
                out.append(dict(entry))
                continue
            extra = entry.get("vars") or {}
            if not isinstance(extra, Mapping):
                raise AnsibleLookupError(f"headroom.pg.rendered_files: vars of {entry.get('path')!r} must be a mapping, got {extra!r}")
            key = (entry["template"], json.dumps(extra, sort_keys=True, default=str))
            if key not in checksums:
                rendered = template.run([entry["template"]], variables, template_vars=dict(extra))[0]
                checksums[key] = sha1_of(rendered)
            out.append(dict(entry, checksum=checksums[key]))
        return out
