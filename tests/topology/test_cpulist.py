import pytest

from pinfold.topology import format_cpulist, parse_cpulist


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]),
        ("5", [5]),
        ("", []),
        ("0-1\n", [0, 1]),
        ("3,1,2-2", [1, 2, 3]),
    ],
    ids=["ranges-and-singles", "single", "empty-node", "trailing-newline", "unsorted"],
)
def test_parse_cpulist_accepts_kernel_syntax(text, cpus):
    assert parse_cpulist(text) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "1-", "0,,x", "1-2-3"])
def test_parse_cpulist_rejects_malformed_lists(text):
    with pytest.raises(ValueError, match="bad CPU"):
        parse_cpulist(text)


@pytest.mark.parametrize(
    ("cpus", "text"),
    [([0, 1, 2, 3, 8, 10, 11], "0-3,8,10-11"), ([], ""), ([7], "7"), ([4, 0, 4, 1], "0-1,4")],
)
def test_format_cpulist_is_compact_and_inverts_parse(cpus, text):
    assert format_cpulist(cpus) == text
    assert parse_cpulist(format_cpulist(cpus)) == sorted(set(cpus))
