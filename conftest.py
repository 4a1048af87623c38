"""Make the checkout importable as the collection headroom.pg, as Ansible sees it."""

from pathlib import Path

from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

REPO_ROOT = Path(__file__).resolve().parent

_AnsibleCollectionFinder(paths=[str(REPO_ROOT / "collections")])._install()
