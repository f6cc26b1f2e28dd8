"""ListPlan against a brute-force model of S3 listing, over an in-memory ls_page with tiny pages."""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storg.s3 import listing
from storg.s3.errors import S3Error
from storg.s3.listing import ListPlan


@dataclass
class File:
    path: str
    size: int = 1
    modified_ns: int = 0
    sha256: str = "ab" * 32


class Store:
    """``ls_page`` as StorgClient documents it: string prefix, path order, after start_after, at most limit.

    ``page`` caps each answer further, as a server may; ``calls`` counts them.
    """

    def __init__(self, paths, page=1000):
        self.paths = sorted(set(paths))
        self.page = page
        self.calls = 0

    def ls_page(self, prefix, start_after, limit):
        self.calls += 1
        i = bisect.bisect_right(self.paths, start_after) if start_after else 0
        out = []
        while i < len(self.paths) and len(out) < min(limit, self.page):
            if self.paths[i].startswith(prefix):
                out.append(File(self.paths[i]))
            elif self.paths[i] > prefix and not self.paths[i].startswith(prefix):
                if out or self.paths[i] > prefix + "\U0010ffff":
                    break
            i += 1
        more = any(p.startswith(prefix) for p in self.paths[i:])
        return out, more


def run(store, bucket, query, version=2):
    plan = ListPlan(bucket, query, version=version)
    while (fetch := plan.next_fetch()) is not None:
        start_after, limit = fetch
        assert 1 <= limit <= listing.PAGE
        files, more = store.ls_page(plan.ls_prefix, start_after, limit)
        plan.take(files, more)
    return plan.result()


def model(keys, prefix, delimiter, resume):
    """Everything S3 would list after ``resume``, in order: ("K", key) or ("P", common prefix)."""
    out = []
    for key in sorted(set(keys)):
        if not key.startswith(prefix) or key <= resume:
            continue
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut >= 0:
            common = key[:cut + len(delimiter)]
            if common > resume and (not out or out[-1] != ("P", common)):
                out.append(("P", common))
        else:
            out.append(("K", key))
    return out


def items_of(result):
    merged = [("K", e.key) for e in result.entries] + [("P", p) for p in result.common_prefixes]
    return sorted(merged, key=lambda item: item[1])


def test_simple_listing_with_delimiter():
    keys = ["a.txt", "dir/1", "dir/2", "dir/sub/3", "z"]
    store = Store([f"/bkt/{k}" for k in keys] + ["/other/x", "/bkt2/y"])
    result = run(store, "bkt", {"delimiter": "/"})
    assert [e.key for e in result.entries] == ["a.txt", "z"]
    assert result.common_prefixes == ["dir/"]
    assert result.key_count == 3 and not result.truncated and result.next_continuation_token == ""
    inner = run(store, "bkt", {"delimiter": "/", "prefix": "dir/"})
    assert [e.key for e in inner.entries] == ["dir/1", "dir/2"] and inner.common_prefixes == ["dir/sub/"]


def test_a_huge_common_prefix_costs_one_fetch_not_one_per_file():
    paths = [f"/bkt/big/{i:06d}" for i in range(50_000)] + ["/bkt/after"]
    store = Store(paths, page=100)
    result = run(store, "bkt", {"delimiter": "/"})
    assert result.common_prefixes == ["big/"] and [e.key for e in result.entries] == ["after"]
    assert store.calls <= 4


def test_keys_full_of_the_last_character_still_terminate():
    last = listing.LAST_CHAR
    paths = [f"/bkt/p/{last * n}x" for n in range(1, 12)] + ["/bkt/q"]
    store = Store(paths, page=1)
    result = run(store, "bkt", {"delimiter": "/"})
    assert result.common_prefixes == ["p/"] and [e.key for e in result.entries] == ["q"]


def test_max_keys_and_truncation_are_exact():
    store = Store([f"/bkt/k{i}" for i in range(5)])
    assert run(store, "bkt", {"max-keys": "5"}).truncated is False
    cut = run(store, "bkt", {"max-keys": "4"})
    assert cut.truncated and len(cut.entries) == 4 and cut.next_continuation_token
    zero = run(store, "bkt", {"max-keys": "0"})
    assert zero.key_count == 0 and not zero.truncated
    assert run(store, "bkt", {"max-keys": "5000"}).max_keys == 1000
    with pytest.raises(S3Error):
        ListPlan("bkt", {"max-keys": "-1"})


def test_a_prefix_whose_files_all_roll_into_the_last_common_prefix_is_not_truncated():
    store = Store(["/bkt/a", "/bkt/d/1", "/bkt/d/2", "/bkt/d/3"], page=1)
    result = run(store, "bkt", {"delimiter": "/", "max-keys": "2"})
    assert items_of(result) == [("K", "a"), ("P", "d/")] and not result.truncated


def test_tokens_are_opaque_and_checked():
    token = listing.encode_token("some/key")
    assert "some" not in token and listing.decode_token(token) == "some/key"
    for bad in ("garbage!", listing.encode_token("x")[:-3] + "AAA", "c29tZS9rZXk"):
        with pytest.raises(S3Error) as info:
            ListPlan("bkt", {"continuation-token": bad})
        assert info.value.code == "InvalidArgument"
    with pytest.raises(S3Error):
        ListPlan("bkt", {"continuation-token": ""})


def test_v1_next_marker_only_with_a_delimiter():
    store = Store([f"/bkt/k{i}" for i in range(3)] + ["/bkt/d/x"])
    plain = run(store, "bkt", {"max-keys": "1"}, version=1)
    assert plain.truncated and plain.next_marker == "" and plain.fetch_owner
    with_delimiter = run(store, "bkt", {"max-keys": "1", "delimiter": "/"}, version=1)
    assert with_delimiter.truncated and with_delimiter.next_marker == "d/"
    after = run(store, "bkt", {"marker": "d/", "delimiter": "/"}, version=1)
    assert items_of(after) == [("K", "k0"), ("K", "k1"), ("K", "k2")]


def test_bad_parameters():
    with pytest.raises(S3Error):
        ListPlan("bkt", {"encoding-type": "base64"})
    with pytest.raises(S3Error):
        ListPlan("BAD_bucket", {})
    plan = ListPlan("bkt", {})
    with pytest.raises(RuntimeError):
        plan.result()


def test_etag_falls_back_to_the_sha256():
    class Attrs:
        etag = "d41d8cd98f00b204e9800998ecf8427e"

    f = File("/bkt/x")
    assert listing.etag_of(f) == f.sha256
    f.attrs = Attrs()
    assert listing.etag_of(f) == Attrs.etag


KEY = st.text(alphabet="ab/-.", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(keys=st.lists(KEY, max_size=30), prefix=st.sampled_from(["", "a", "a/", "b-", "ab"]),
       delimiter=st.sampled_from(["", "/", "-", "ab"]), max_keys=st.integers(1, 7), page=st.integers(1, 5),
       start_after=st.sampled_from(["", "a", "a/", "b"]), version=st.sampled_from([1, 2]))
def test_property_paging_through_everything_matches_the_model(keys, prefix, delimiter, max_keys, page, start_after,
                                                              version):
    store = Store([f"/bkt/{k}" for k in keys] + [f"/bkz/{k}" for k in keys], page=page)
    query = {"prefix": prefix, "delimiter": delimiter, "max-keys": str(max_keys)}
    query["start-after" if version == 2 else "marker"] = start_after
    everything = model(keys, prefix, delimiter, start_after)
    seen = []
    for _ in range(len(everything) + 2):
        result = run(store, "bkt", query, version)
        got = items_of(result)
        assert len(got) <= max_keys
        seen += got
        if not result.truncated:
            break
        if version == 2:
            query["continuation-token"] = result.next_continuation_token
        else:
            query["marker"] = result.next_marker or result.entries[-1].key
    assert seen == everything
