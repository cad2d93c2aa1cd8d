"""The storage layer: a narrow S3-shaped contract and its backends."""

from qo.store.base import LIST_PAGE_SIZE, ObjectInfo, Store, StoredObject, check_key
from qo.store.memory import MemoryStore
from qo.store.url import open_store, resolve_url

__all__ = [
    "LIST_PAGE_SIZE",
    "MemoryStore",
    "ObjectInfo",
    "Store",
    "StoredObject",
    "check_key",
    "open_store",
    "resolve_url",
]
