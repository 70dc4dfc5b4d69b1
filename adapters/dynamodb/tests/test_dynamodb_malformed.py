"""Items DynamoDB returns that cannot be read (a fault injector mangles the parsed response
of a real moto server): a source failure naming the table and the attribute, never a bare
decoding error; a batch keeps every item it could read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tiered_cache_dynamodb import BatchLoadError, DynamoDBSource
from tiered_cache_dynamodb.testing import seed_items

from tiered_cache.errors import SourceError

KEYS = [f"k{i}" for i in range(6)]

#: What the injector puts in place of attribute ``n`` of item ``k3`` (or does to the item).
MANGLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "an unknown type tag": lambda item: item.update(n={"ZZ": "x"}),
    "a number past DynamoDB's range": lambda item: item.update(n={"N": "1e200"}),
    "a value that is not a typed map": lambda item: item.update(n="plain"),
}


class MangleItem:
    """An ``after-call`` hook that mangles the item of ``key`` in GetItem and BatchGetItem
    responses, as a proxy or a broken client-side hook could."""

    def __init__(self, client: Any, table: str, key: str, mangle: Callable[[Any], None]) -> None:
        self.table, self.key, self.mangle = table, key, mangle
        self.mangled = 0
        for operation in ("GetItem", "BatchGetItem"):
            client.meta.events.register(f"after-call.dynamodb.{operation}", self._after_call)

    def _after_call(self, parsed: dict[str, Any], **kwargs: Any) -> None:
        items = parsed.get("Responses", {}).get(self.table, [])
        for item in [parsed["Item"]] if "Item" in parsed else items:
            if item.get("id") == {"S": self.key}:
                self.mangle(item)
                self.mangled += 1


@pytest.fixture
def table(make_table: Callable[..., str], admin_client: Any) -> str:
    name = make_table(key="id")
    seed_items(admin_client, name, KEYS)
    return name


@pytest.mark.parametrize("mangle", MANGLES.values(), ids=MANGLES)
def test_an_item_that_cannot_be_read_is_a_source_error_naming_table_and_attribute(
    table: str, make_source: Callable[..., DynamoDBSource], mangle: Callable[[Any], None]
) -> None:
    """It raised the deserializer's own error (ValueError: not a DynamoDB attribute value
    type, decimal.Overflow, AttributeError), which names no table and is no SourceError."""
    source = make_source(table=table, key="id")
    injector = MangleItem(source.client, table, "k3", mangle)
    with pytest.raises(SourceError, match=f"GetItem on table '{table}'.*attribute 'n'"):
        source.load("k3")
    assert source.load("k2") == {"id": "k2", "n": 2}
    assert injector.mangled == 1


@pytest.mark.parametrize(
    "mangle",
    [*MANGLES.values(), lambda item: item.pop("id")],
    ids=[*MANGLES, "an item without its key"],
)
def test_a_batch_with_an_item_that_cannot_be_read_keeps_the_others(
    table: str, make_source: Callable[..., DynamoDBSource], mangle: Callable[[Any], None]
) -> None:
    """The batch raised at the bad item (an item without its key as InvalidKeyError, a cache
    key's error) and lost every item it had read: the chain's get_many served none."""
    source = make_source(table=table, key="id")
    MangleItem(source.client, table, "k3", mangle)
    with pytest.raises(BatchLoadError, match=f"BatchGetItem on table '{table}'") as caught:
        source.load_many(KEYS)
    read = {key: {"id": key, "n": int(key[1:])} for key in KEYS if key != "k3"}
    assert caught.value.found == read
    assert caught.value.unprocessed == 1


#: Typed items are passed on as DynamoDB gave them, but the read meter sizes their form.
TYPED_MANGLES: dict[str, Callable[[dict[str, Any]], None]] = {
    "an unknown type tag": MANGLES["an unknown type tag"],
    "a value that is not a typed map": MANGLES["a value that is not a typed map"],
    "a map of two type tags": lambda item: item.update(n={"S": "x", "N": "1"}),
}


@pytest.mark.parametrize("mangle", TYPED_MANGLES.values(), ids=TYPED_MANGLES)
def test_a_typed_item_that_cannot_be_read_is_a_source_error_too(
    table: str, make_source: Callable[..., DynamoDBSource], mangle: Callable[[Any], None]
) -> None:
    """With ``typed_items`` the item was returned unchecked, and the read meter then failed
    on it with a bare ValueError (or AttributeError), naming nothing; a batch lost every
    item read."""
    source = make_source(table=table, key="id", typed_items=True)
    MangleItem(source.client, table, "k3", mangle)
    with pytest.raises(SourceError, match=f"GetItem on table '{table}'.*attribute 'n'"):
        source.load("k3")
    assert source.load("k2") == {"id": {"S": "k2"}, "n": {"N": "2"}}
    with pytest.raises(BatchLoadError, match=f"BatchGetItem on table '{table}'") as caught:
        source.load_many(KEYS)
    read = {key: {"id": {"S": key}, "n": {"N": key[1:]}} for key in KEYS if key != "k3"}
    assert caught.value.found == read
    assert caught.value.unprocessed == 1
    # Every read is counted, the unreadable ones at the minimum: 2 GetItem, 6 batch keys.
    assert source.report()["reads"] == 8


@pytest.mark.parametrize("typed_items", [False, True])
@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda item: item.pop("id"), "has no 'S' attribute 'id'"),
        (lambda item: item.update(id={"N": "3"}), "key attribute 'id' is"),
        (lambda item: item.update(id={"S": "k4"}), "another key's item"),
    ],
    ids=["without its key", "its key of another type", "another key's item"],
)
def test_get_item_refuses_an_item_that_is_not_the_keys(
    table: str,
    make_source: Callable[..., DynamoDBSource],
    typed_items: bool,
    mangle: Callable[[Any], None],
    problem: str,
) -> None:
    """GetItem passed on any item it was given, where BatchGetItem matched each item to its
    key (a proxy's or a hook's mistake would be cached under the key asked for)."""
    source = make_source(table=table, key="id", typed_items=typed_items)
    MangleItem(source.client, table, "k3", mangle)
    with pytest.raises(SourceError, match=f"GetItem on table '{table}'.*{problem}"):
        source.load("k3")
    assert source.report()["reads"] == 1
