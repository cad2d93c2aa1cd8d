"""S3 answers that are not outages: 501 / unsupported headers, and broken pagination."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from botocore.stub import Stubber

from qo.errors import ListingStalled, NotSupported, StoreUnavailable
from qo.protocol.cas import delete_quietly
from qo.store.failures import delete_failures
from qo.store.s3 import S3Store, make_client


@pytest.fixture
def stubbed() -> tuple[S3Store, Stubber]:
    client = make_client(endpoint_url="http://127.0.0.1:9", max_attempts=1)
    store = S3Store("bucket", "pfx", client=client)
    stubber = Stubber(client)
    stubber.activate()
    return store, stubber


def test_501_to_a_conditional_delete_is_not_supported_and_not_retried(stubbed) -> None:
    store, stub = stubbed
    message = "A header you provided implies functionality that is not implemented"
    stub.add_client_error("delete_object", "NotImplemented", message, 501)
    with pytest.raises(NotSupported) as err:
        store.delete("leases/q/t", if_match='"abc"')
    assert not isinstance(err.value, StoreUnavailable) and "NotImplemented" in str(err.value)
    stub.add_client_error("delete_object", "NotImplemented", message, 501)
    before = delete_failures.count(store)
    assert delete_quietly(store, "ready/q/x", if_match='"abc"') is False
    stub.assert_no_pending_responses()  # one request: a refusal is not retried like an outage
    assert delete_failures.count(store) == before + 1


def test_a_400_naming_an_unsupported_header_is_not_supported(stubbed) -> None:
    store, stub = stubbed
    stub.add_client_error("put_object", "InvalidArgument",
                          "The If-Match header is not supported for this operation", 400)
    with pytest.raises(NotSupported):
        store.put("k", b"x", if_match='"abc"')


def test_a_503_is_still_an_outage(stubbed) -> None:
    store, stub = stubbed
    stub.add_client_error("delete_object", "ServiceUnavailable", "busy", 503)
    with pytest.raises(StoreUnavailable):
        store.delete("k", if_match='"abc"')


def _page(keys: list[str], token: str | None) -> dict:
    now = dt.datetime.now(dt.UTC)
    resp: dict = {"Contents": [{"Key": f"pfx/{k}", "ETag": '"e"', "Size": 0, "LastModified": now}
                               for k in keys], "IsTruncated": token is not None}
    if token:
        resp["NextContinuationToken"] = token
    return resp


def test_a_listing_that_returns_the_same_page_again_raises(stubbed) -> None:
    store, stub = stubbed
    stub.add_response("list_objects_v2", _page(["ready/a", "ready/b"], "t1"))
    stub.add_response("list_objects_v2", _page(["ready/a", "ready/b"], "t2"))
    with pytest.raises(ListingStalled, match="does not sort after 'ready/b'"):
        list(itertools.islice(store.list("ready/"), 100))


def test_a_listing_that_repeats_its_token_raises(stubbed) -> None:
    store, stub = stubbed
    stub.add_response("list_objects_v2", _page(["ready/a"], "t1"))
    stub.add_response("list_objects_v2", _page([], "t1"))
    with pytest.raises(ListingStalled, match="continuation token"):
        list(store.list("ready/"))
