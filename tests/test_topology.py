"""Tests for sparsenn.topology: RadiX-Nets against a dense reference twin, the Graph Challenge
network, random/expander topologies, exact path counting, and the command line."""

import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenn import topology as T
from sparsenn.io import load_masks

# --------------------------------------------------------------------------------------------
# reference twins: the papers' definitions, written with dense arrays and plain loops
# --------------------------------------------------------------------------------------------


def radix_reference(radix_lists, B):
    """Dense masks straight from the definition (papers' orientation, row = source), transposed.

    W_i[j, (j - n nu_i) mod N'] = 1 for n < N_i; layer i = kron(ones(B_i, B_{i+1}), W_i).
    """
    n_prime = math.prod(radix_lists[0])
    out, i = [], 0
    for radices in radix_lists:
        place = 1
        for radix in radices:
            w = np.zeros((n_prime, n_prime), dtype=np.int64)
            for j in range(n_prime):
                for n in range(radix):
                    w[j, (j - n * place) % n_prime] = 1
            out.append(np.kron(np.ones((B[i], B[i + 1]), dtype=np.int64), w).T)
            place *= radix
            i += 1
    return out


def paths_reference(dense_masks):
    """P = M_L ... M_1 with exact Python ints (object arrays)."""
    p = np.asarray(dense_masks[0]).astype(object)
    for m in dense_masks[1:]:
        p = np.asarray(m).astype(object).dot(p)
    return p


def expected_radix_paths(radix_lists, B):
    """1 (one list) or N'^(M-2) * p (M >= 2 lists), times the interior widths B_2 ... B_L."""
    n_prime, m = math.prod(radix_lists[0]), len(radix_lists)
    per_block = 1 if m == 1 else n_prime ** (m - 2) * math.prod(radix_lists[-1])
    return per_block * math.prod(B[1:-1])


def _prime_factors(n):
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def _factorisation(draw, n):
    """A random ordered factorisation of n into radices >= 1 (a permuted, regrouped prime list)."""
    primes = draw(st.permutations(_prime_factors(n)))
    radices = []
    for p in primes:
        if radices and draw(st.booleans()):
            radices[-1] *= p
        else:
            radices.append(p)
    if not radices or draw(st.integers(0, 4)) == 0:  # sometimes a radix of 1 (identity layer)
        radices.insert(draw(st.integers(0, len(radices))), 1)
    return radices


@st.composite
def radix_setups(draw):
    """Valid (radix_lists, B): N' <= 64, up to 3 lists, widths B <= 3."""
    first = draw(st.lists(st.integers(1, 4), min_size=1, max_size=3))
    n_prime = math.prod(first)
    n_lists = draw(st.integers(1, 3))
    lists = [first] + [_factorisation(draw, n_prime) for _ in range(n_lists - 2)]
    if n_lists >= 2:
        divisor = draw(st.sampled_from([d for d in range(1, n_prime + 1) if n_prime % d == 0]))
        lists.append(_factorisation(draw, divisor))
    n_layers = sum(len(r) for r in lists)
    B = draw(st.lists(st.integers(1, 3), min_size=n_layers + 1, max_size=n_layers + 1))
    return lists, B


# --------------------------------------------------------------------------------------------
# RadiX-Nets
# --------------------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(radix_setups())
def test_radix_net_matches_definition_degrees_and_paths(setup):
    lists, B = setup
    masks = T.radix_net(lists, B=B)
    ref = radix_reference(lists, B)
    n_prime = math.prod(lists[0])
    radices = [r for rl in lists for r in rl]
    assert len(masks) == len(radices)
    for i, (m, r, radix) in enumerate(zip(masks, ref, radices)):
        assert isinstance(m, sp.csr_matrix) and m.dtype == bool
        assert m.shape == (B[i + 1] * n_prime, B[i] * n_prime)
        np.testing.assert_array_equal(m.toarray(), r.astype(bool), err_msg=f"layer {i}")
        assert m.has_sorted_indices and m.indices.dtype == np.int32
        assert np.all(np.diff(m.indptr) == B[i] * radix)  # in-degree
        assert np.all(np.bincount(m.indices, minlength=m.shape[1]) == B[i + 1] * radix)
        assert m.nnz / (m.shape[0] * m.shape[1]) == pytest.approx(radix / n_prime)
    expected = expected_radix_paths(lists, B)
    p = paths_reference(ref)
    assert np.all(p == expected)
    desc = T.describe(masks)
    assert desc["paths"]["min"] == desc["paths"]["max"] == expected
    assert desc["paths"]["all_equal"] and desc["paths"]["all_reachable"]
    assert type(desc["paths"]["min"]) is int


def test_worked_case_2_2_2():
    masks = T.radix_net([[2, 2, 2]])
    assert [m.shape for m in masks] == [(8, 8)] * 3
    for m in masks:
        assert m.nnz == 16 and 1 - m.nnz / 64 == 0.75
    product = masks[2].astype(np.int64) @ masks[1].astype(np.int64) @ masks[0].astype(np.int64)
    np.testing.assert_array_equal(product.toarray(), np.ones((8, 8), dtype=np.int64))
    # Sign convention: output r is fed by r + n * nu (mod 8), i.e. source j feeds j - n * nu.
    assert list(masks[0][0].indices) == [0, 1]
    assert list(masks[1][7].indices) == [1, 7]
    assert list(masks[2][5].indices) == [1, 5]
    # A flat list is the same single mixed radix.
    assert all((a != b).nnz == 0 for a, b in zip(masks, T.radix_net([2, 2, 2])))


def test_graph_challenge_1024_neurons_120_layers():
    masks = T.radix_net([[2, 2, 2, 2, 2, 2]] * 20, B=[16] * 121)
    assert len(masks) == 120
    for m in masks:
        assert m.shape == (1024, 1024) and m.nnz == 32768
        assert np.all(np.diff(m.indptr) == 32)
        assert np.all(np.bincount(m.indices, minlength=1024) == 32)
    # The challenge files (row = source, 1-based): output neuron 1 of layer 1 is fed by
    # {1, 2, 65, 66, ..., 961, 962}; of layer 2 by {1, 3, 65, 67, ...}; of layer 6 by
    # {1, 33, 65, 97, ...}. Here: row 0 of the (n_out, n_in) mask, 0-based neuron 64 b + j.
    def fed_by(layer, offsets):
        return sorted(64 * b + j for b in range(16) for j in offsets)

    assert list(masks[0][0].indices) == fed_by(0, (0, 1))
    assert list(masks[1][0].indices) == fed_by(1, (0, 2))
    assert list(masks[5][0].indices) == fed_by(5, (0, 32))
    assert list(masks[6][0].indices) == fed_by(6, (0, 1))  # place values restart each list
    # One more output, to pin the direction: output 1-based 2 (row 1) of layer 1 gets {2, 3, ...}.
    assert list(masks[0][1].indices) == fed_by(0, (1, 2))
    paths = T.describe(masks)["paths"]
    assert expected_radix_paths([[2] * 6] * 20, [16] * 121) == 2**590
    assert paths["min"] == paths["max"] == 2**590
    assert paths["all_reachable"] and paths["all_equal"]


def test_65536_neuron_stack_generates_in_o_nnz():
    masks = T.radix_net([[2] * 12], B=[16] * 13)  # N' = 4096, 16 * 4096 = 65536 neurons
    assert len(masks) == 12
    for m in masks:
        assert m.shape == (65536, 65536) and m.nnz == 65536 * 32
        assert m.indices.dtype == np.int32 and np.all(np.diff(m.indptr) == 32)
    assert list(masks[11][0].indices) == sorted(4096 * b + j for b in range(16) for j in (0, 2048))
    stats = T.path_stats(masks[:2])  # 2 layers: 65536 x 65536 path matrix is past the limit
    assert stats["min"] is None and "not computed" in stats["note"]


@pytest.mark.parametrize(
    "lists, B, match",
    [
        ([], None, "non-empty"),
        ([[]], None, "list 0 is empty"),
        ([[2, 2], []], None, "list 1 is empty"),
        ([[2, 0]], None, r"radix 1 of list 0 must be >= 1, got 0"),
        ([[2, -3]], None, ">= 1"),
        ([[2, 2.5]], None, "must be an integer"),
        ([[2, 3], [3, 3], [2]], None, "list 1 .*product 9.*N' = 6"),
        ([[2, 3], [4]], None, "product 4, which must divide N' = 6"),
        ([[2, 2]], [1, 1], "B must have L \\+ 1 = 3 entries"),
        ([[2, 2]], [1, 0, 1], r"B\[1\] must be >= 1, got 0"),
        ([[2, 2]], [1, -2, 1], r"B\[1\] must be >= 1"),
        ([[2, 2]], 3, "B must be a list"),
        ("22", None, "radix lists"),
    ],
)
def test_radix_net_errors(lists, B, match):
    with pytest.raises(ValueError, match=match):
        T.radix_net(lists, B=B)


def test_radix_net_refuses_layers_beyond_int32_before_allocating():
    with pytest.raises(ValueError, match="int32"):
        T.radix_net([[2] * 16], B=[2**15] * 17)


def test_trim_and_its_errors():
    masks = T.radix_net([[2, 2, 2]])
    trimmed = T.trim(masks, [8, 5, 8, 8])
    assert [m.shape for m in trimmed] == [(5, 8), (8, 5), (8, 8)]
    desc = T.describe(trimmed)
    # Trimming an interior layer removes paths unevenly: path symmetry is gone.
    assert not desc["paths"]["all_equal"]
    assert desc["layers"][1]["in_degree"][0] < desc["layers"][1]["in_degree"][1]
    with pytest.raises(ValueError, match="widths must have 4 entries"):
        T.trim(masks, [8, 8])
    with pytest.raises(ValueError, match=r"widths\[1\] must be in \[1, 8\], got 9"):
        T.trim(masks, [8, 9, 8, 8])
    with pytest.raises(ValueError, match=r"widths\[0\] must be in \[1, 8\], got 0"):
        T.trim(masks, [0, 8, 8, 8])


def test_lenet_presets():
    assert set(T.PRESETS) == {"radix", "radix-wide"}
    small = T.PRESETS["radix"]()
    assert [m.shape for m in small] == [(300, 784), (100, 300)]
    wide = T.PRESETS["radix-wide"]()
    assert [m.shape for m in wide] == [(3000, 784), (100, 3000)]
    for masks in (small, wide):
        for m in masks:
            assert m.nnz / (m.shape[0] * m.shape[1]) == pytest.approx(0.10, abs=1e-3)
    # The wide variant has as many connections as dense LeNet-300-100's first two layers.
    assert sum(m.nnz for m in wide) == 784 * 300 + 300 * 100
    desc = T.describe(small)
    assert desc["layers"][0]["in_degree"] == (70, 80)  # 16 dropped inputs: no longer regular
    assert desc["layers"][0]["out_degree"] == (30, 30)
    assert desc["paths"]["min"] == desc["paths"]["max"] == 3  # B_2 = 3 copies of one path
    assert T.describe(wide)["paths"]["max"] == 30


# --------------------------------------------------------------------------------------------
# random and expander topologies
# --------------------------------------------------------------------------------------------


def _canonical(m):
    assert isinstance(m, sp.csr_matrix) and m.dtype == bool and m.indices.dtype == np.int32
    for r in range(m.shape[0]):
        cols = m.indices[m.indptr[r]:m.indptr[r + 1]]
        assert np.all(np.diff(cols) > 0), f"row {r} not sorted/unique"


def test_random_sparse_density_and_form():
    rng = np.random.default_rng(0)
    m = T.random_sparse(300, 784, 0.1, rng)
    _canonical(m)
    assert m.shape == (300, 784)
    assert m.nnz / (300 * 784) == pytest.approx(0.1, abs=0.005)  # sd ~ 0.0006
    assert T.random_sparse(5, 7, 0.0, rng).nnz == 0
    assert T.random_sparse(5, 7, 1.0, rng).nnz == 35
    dense_ish = T.random_sparse(50, 40, 0.9, rng)  # exercises the complement path
    _canonical(dense_ish)
    assert dense_ish.nnz / 2000 == pytest.approx(0.9, abs=0.03)


def test_random_subsets_are_uniform():
    # 2-subsets (direct rejection) and 3-subsets (complement) of range(4): 6 and 4 outcomes.
    rng = np.random.default_rng(1)
    n = 12000
    for k, n_outcomes in ((2, 6), (3, 4)):
        rows, vals = T._random_subsets(np.full(n, 4), np.full(n, k), rng)
        assert np.all(np.bincount(rows, minlength=n) == k)
        code = np.bitwise_or.reduceat(1 << vals, np.arange(0, n * k, k))  # subset as a bit mask
        freq = np.unique(code, return_counts=True)[1]
        assert len(freq) == n_outcomes
        expected = n / n_outcomes
        chi2 = ((freq - expected) ** 2 / expected).sum()
        assert chi2 < 25  # df <= 5; P(chi2 > 25) < 2e-4


def test_random_equivalent_bernoulli_and_fixed_fan_in():
    masks = T.lenet300_radix()
    rng = np.random.default_rng(2)
    rand = T.random_equivalent(masks, rng)
    for m, r in zip(masks, rand):
        _canonical(r)
        assert r.shape == m.shape
        d, dr = m.nnz / np.prod(m.shape), r.nnz / np.prod(r.shape)
        assert dr == pytest.approx(d, abs=0.01)
    fixed = T.random_equivalent(masks, rng, fixed_fan_in=True)
    for m, f in zip(masks, fixed):
        _canonical(f)
        k = round(m.nnz / m.shape[0])  # round(density * n_in) = the mean in-degree, rounded
        assert np.all(np.diff(f.indptr) == k)
    # Untrimmed RadiX-Net: integral mean in-degree, so fixed fan-in keeps nnz exactly.
    radix = T.radix_net([[4, 4]], B=[2, 3, 1])
    assert [f.nnz for f in T.random_equivalent(radix, rng, True)] == [m.nnz for m in radix]
    # Same seed, same masks.
    a = T.random_equivalent(masks, np.random.default_rng(7))
    b = T.random_equivalent(masks, np.random.default_rng(7))
    assert all((x != y).nnz == 0 for x, y in zip(a, b))


@pytest.mark.parametrize("n_out, n_in, k", [(300, 784, 3), (300, 784, 78), (10, 20, 15),
                                            (100, 30, 30), (1, 5, 5), (7, 100, 2), (64, 64, 1)])
def test_xnet_exact_in_degree_and_coverage(n_out, n_in, k):
    m = T.xnet(n_out, n_in, k, np.random.default_rng(3))
    _canonical(m)
    assert m.shape == (n_out, n_in)
    assert np.all(np.diff(m.indptr) == k)
    out_deg = np.bincount(m.indices, minlength=n_in)
    if k * n_out >= n_in:
        assert out_deg.min() >= 1  # every input feeds some output
    else:
        assert out_deg.max() == 1  # the deal gave every output distinct inputs


def test_random_functions_require_a_generator():
    masks = T.radix_net([[2, 2]])
    for call in (lambda r: T.random_sparse(4, 4, 0.5, r), lambda r: T.xnet(4, 4, 2, r),
                 lambda r: T.random_equivalent(masks, r)):
        for bad in (0, None, np.random.RandomState(0)):
            with pytest.raises(TypeError, match="numpy.random.Generator"):
                call(bad)


def test_random_argument_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\], got 1.5"):
        T.random_sparse(4, 4, 1.5, rng)
    with pytest.raises(ValueError, match="density"):
        T.random_sparse(4, 4, float("nan"), rng)
    with pytest.raises(ValueError, match="n_out must be >= 1, got 0"):
        T.random_sparse(0, 4, 0.5, rng)
    with pytest.raises(ValueError, match=r"in_degree must be in \[1, 4\], got 5"):
        T.xnet(4, 4, 5, rng)
    with pytest.raises(ValueError, match="must chain"):
        T.random_equivalent([sp.eye(3), sp.eye(4)], rng)


# --------------------------------------------------------------------------------------------
# describe: degrees and exact path counts
# --------------------------------------------------------------------------------------------


def test_describe_hand_checked_example():
    # inputs 0,1,2 -> hidden 0,1 -> output 0.  h0 <- {0, 1}, h1 <- {1}; out <- {h0, h1}.
    m1 = np.array([[1, 1, 0], [0, 1, 0]])
    m2 = np.array([[1, 1]])
    desc = T.describe([m1, m2])
    assert desc["widths"] == [3, 2, 1]
    assert desc["nnz"] == 5
    l1, l2 = desc["layers"]
    assert l1["shape"] == (2, 3) and l1["nnz"] == 3 and l1["density"] == pytest.approx(0.5)
    assert l1["in_degree"] == (1, 2) and l1["out_degree"] == (0, 2)
    assert l2["in_degree"] == (2, 2) and l2["out_degree"] == (1, 1)
    # paths: input 0 -> 1 (via h0), input 1 -> 2 (via h0 and h1), input 2 -> 0.
    p = desc["paths"]
    assert (p["min"], p["max"], p["all_reachable"], p["all_equal"]) == (0, 2, False, False)
    text = T.format_description(desc)
    assert "2 x 3" in text and "NOT all equal" in text and "NOT reachable" in text


def test_path_counts_beyond_int64_without_structure_use_exact_limbs():
    # 30 random 12 x 12 layers at ~70% density: ~8^30 ~ 2^90 paths, no rank-1 structure.
    rng = np.random.default_rng(4)
    masks = [T.random_sparse(12, 12, 0.7, rng) for _ in range(30)]
    masks[5] = T.random_sparse(12, 12, 0.2, rng)  # make some counts small and some zero-prone
    p = paths_reference([m.toarray().astype(np.int64) for m in masks])
    stats = T.path_stats(masks)
    assert "limbs" in stats["method"]
    assert stats["max"] == max(p.flat) > 2**63
    assert stats["min"] == min(p.flat)
    assert stats["all_reachable"] == bool(np.all(p > 0))
    assert stats["all_equal"] == (min(p.flat) == max(p.flat))


@pytest.mark.parametrize("structure", ["rows", "columns"])
def test_path_counts_rank_one_structure_is_exact(structure):
    # rows: a full first layer makes P = J, so later P = u 1^T (constant rows).
    # columns: a full second layer makes P = 1 v^T with v the first layer's column sums.
    rng = np.random.default_rng(5)
    first = np.eye(6, 5, dtype=bool)
    first[0] = True
    first[1, 3:] = True  # every column used, column sums unequal: (2, 2, 2, 3, 3)
    if structure == "rows":
        head = [np.ones((6, 5), dtype=bool)]
    else:
        head = [first, np.ones((6, 6), dtype=bool)]
    masks = head + [T.random_sparse(6, 6, 0.6, rng) for _ in range(40)]
    p = paths_reference([np.asarray(sp.csr_matrix(m).toarray(), dtype=np.int64) for m in masks])
    stats = T.path_stats(masks)
    assert "rank-1" in stats["method"]
    assert (stats["min"], stats["max"]) == (min(p.flat), max(p.flat))
    assert stats["all_reachable"] == bool(np.all(p > 0))


def test_path_counts_skipped_beyond_limit_with_note():
    masks = T.radix_net([[4, 4]], B=[2, 2, 2])
    stats = T.describe(masks, max_entries=100)["paths"]
    assert stats["min"] is None and "max_entries = 100" in stats["note"]
    assert "not computed" in T.format_description(T.describe(masks, max_entries=100))


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_radix_table_and_save(tmp_path, capsys):
    out_file = tmp_path / "m.npz"
    rc = T.main(["radix", "--radices", "10,10", "--B", "8,3,1", "--trim", "784,300,100",
                 "--save", str(out_file)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "300 x 784" in text and "100 x 300" in text and "90.00%" in text
    assert "70..80" in text and "NOT uniform" in text  # trimming shows in the table
    loaded = load_masks(out_file)
    assert [m.shape for m in loaded] == [(300, 784), (100, 300)]
    assert all((a != b).nnz == 0 for a, b in zip(loaded, T.lenet300_radix()))


def test_cli_presets_and_extended_radix(capsys):
    assert T.main(["preset", "radix-wide"]) == 0
    assert "3000 x 784" in capsys.readouterr().out
    assert T.main(["radix", "--radices", "2x6", "--repeat", "20", "--B", "16x121"]) == 0
    text = capsys.readouterr().out
    assert "2^590" in text and "1024(x121)" in text
    assert T.main(["radix", "--radices", "2,2/2"]) == 0  # M = 2 lists: N'^0 * p = 2 paths
    assert "2 for every input/output pair" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["radix", "--radices", "2,3/4"],
    ["radix", "--radices", "2,a"],
    ["radix", "--radices", "2,2", "--B", "1,1"],
    ["preset", "nope"],
    ["xnet", "--widths", "10,5", "--in-degree", "11"],
    ["describe", "/nonexistent/masks.npz"],
])
def test_cli_bad_input_is_one_line_exit_2(argv, capsys):
    assert T.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and "Traceback" not in err


def test_cli_usage_error_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["radix"])  # --radices missing
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--radices" in err


def test_cli_runs_as_module():
    res = subprocess.run([sys.executable, "-m", "sparsenn.topology", "radix", "--radices", "2,2,2"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "8 x 8" in res.stdout and "1 for every input/output pair" in res.stdout
    res = subprocess.run([sys.executable, "-m", "sparsenn.topology", "radix", "--radices", "0"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
