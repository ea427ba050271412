from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import qa_lib
from qa_lib import DualEncoder, QAError, evaluate
from qa_lib.cli import main
from qa_lib.index import (
    build_index,
    exact_top_k,
    index_pairs,
    model_fingerprint,
    open_index,
    recall_against_exact,
    search,
)
from qa_lib.metrics import build_task

pytest.importorskip("faiss")


@pytest.fixture(scope="module")
def model(tiny_config):
    return DualEncoder.from_config(tiny_config, seed=0)


@pytest.fixture(scope="module")
def pool(tiny_splits):
    """The tiny test split and its retrieval task (evaluate's questions and candidate pool)."""
    test = tiny_splits[1]
    return test, build_task(test)


@pytest.fixture(scope="module")
def flat_dir(tmp_path_factory, model, pool):
    """A flat index over the pool, encoded in chunks smaller than the pool."""
    out = tmp_path_factory.mktemp("indexes") / "flat"
    index_pairs(model, pool[0], out, chunk_size=16, batch_size=8)
    return out


def _ids(found: list[dict]) -> np.ndarray:
    return np.array([[hit["id"] for hit in item["results"]] for item in found])


def test_flat_index_stores_evaluates_embeddings_and_ranks_like_evaluate(model, pool, flat_dir):
    test, task = pool
    a_emb = model.encode_answers(task.candidates, 8)  # what evaluate computes, in one call
    stored = np.load(flat_dir / "vectors.npy")
    assert np.array_equal(stored, a_emb.numpy())  # bitwise: the same batches, the same padding
    scores = model.encode_questions(task.questions, 8) @ a_emb.T  # evaluate's score matrix
    found = open_index(flat_dir, model).search(task.questions, k=10, batch_size=8)
    ids = _ids(found)
    matrix = scores.numpy()
    order = np.argsort(-matrix, axis=1, kind="stable")[:, :10]
    ours, theirs = np.take_along_axis(matrix, ids, 1), np.take_along_axis(matrix, order, 1)
    assert np.all((ids == order) | np.isclose(ours, theirs, rtol=0, atol=1e-6))  # ties aside
    got = np.array([[hit["score"] for hit in item["results"]] for item in found])
    np.testing.assert_allclose(got, ours, rtol=0, atol=1e-5)
    # the metric from the index's hits is evaluate's own
    hit_at_10 = [bool(set(row.tolist()) & set(rel)) for row, rel in zip(ids, task.relevant)]
    assert np.mean(hit_at_10) == pytest.approx(evaluate(model, test, batch_size=8)["recall@10"])


def test_a_pool_encoded_in_chunks_gets_the_whole_pools_batches(tmp_path, model):
    from qa_lib.index import encode_pool
    from qa_lib.inference import TOKENIZE_BLOCK

    # "the" is one token, "x7q" several: the blocks re-sort by token count, differently per block
    words = ("the", "x7q")
    texts = [" ".join([words[i % 3 % 2]] * (1 + i % 11)) for i in range(5 * TOKENIZE_BLOCK * 2 + 3)]
    whole = model.encode_answers(texts, batch_size=2)
    for chunk_size in (1, 2 * TOKENIZE_BLOCK + 2):  # rounded up to whole blocks of batches
        stored = encode_pool(
            model, texts, tmp_path / f"v{chunk_size}.npy", "float32", chunk_size, 2, False
        )
        assert np.array_equal(stored, whole.numpy()), chunk_size  # bitwise: the same batches


def test_search_returns_ranked_passages_with_their_ids_and_texts(model, flat_dir, pool):
    _, task = pool
    found = qa_lib.search(flat_dir, task.questions[0], k=5, model=model)
    assert len(found) == 1 and found[0]["query"] == task.questions[0]
    results = found[0]["results"]
    assert [r["rank"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["text"] for r in results] == [task.candidates[r["id"]] for r in results]
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # more results than passages: the whole pool, once each
    everything = search(flat_dir, [task.questions[0]], k=1000, model=model)[0]["results"]
    assert sorted(r["id"] for r in everything) == list(range(len(task.candidates)))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_report_their_recall_against_flat(tmp_path, model, pool, flat_dir, kind):
    test, task = pool
    manifest = index_pairs(model, test, tmp_path / kind, kind=kind, chunk_size=16, batch_size=8)
    assert manifest["kind"] == kind and manifest["recall_queries"] == len(task.questions)
    approx = _ids(open_index(tmp_path / kind, model).search(task.questions, k=10))
    exact = _ids(open_index(flat_dir, model).search(task.questions, k=10))
    assert manifest["recall@10_vs_flat"] == pytest.approx(recall_against_exact(approx, exact))


def test_ivf_with_every_list_probed_is_exact(tmp_path, model, pool, flat_dir):
    test, task = pool
    manifest = index_pairs(model, test, tmp_path / "ivf", kind="ivf")
    full = open_index(tmp_path / "ivf", model, nprobe=manifest["params"]["nlist"])
    exact = _ids(open_index(flat_dir, model).search(task.questions, k=10))
    assert recall_against_exact(_ids(full.search(task.questions, k=10)), exact) == 1.0


def test_float16_vectors_are_half_the_size_and_close(tmp_path, model, pool, flat_dir):
    test, task = pool
    index_pairs(model, test, tmp_path / "half", dtype="float16")
    half = np.load(tmp_path / "half" / "vectors.npy")
    full = np.load(flat_dir / "vectors.npy")
    assert half.dtype == np.float16 and half.nbytes * 2 == full.nbytes
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=0, atol=1e-3)


def test_exact_top_k_in_chunks_equals_one_matrix_product():
    gen = torch.Generator().manual_seed(0)
    vectors, queries = torch.randn(103, 8, generator=gen), torch.randn(5, 8, generator=gen)
    scores, rows = exact_top_k(vectors.numpy(), queries.numpy(), k=7, chunk_size=10)
    want = (queries @ vectors.T).topk(7, dim=1)
    np.testing.assert_allclose(scores, want.values.numpy(), rtol=1e-6)
    assert np.array_equal(rows, want.indices.numpy())


def test_a_saved_model_is_loaded_from_the_manifest(tmp_path, model, pool):
    _, task = pool
    model.save(tmp_path / "model")
    out = tmp_path / "index"
    ids = [f"doc-{i}" for i in range(len(task.candidates))]
    build_index(model, task.candidates, out, ids=ids, model_spec=tmp_path / "model")
    loaded = search(out, task.questions[:3], k=4)  # model=None: the manifest's folder
    assert loaded == search(out, task.questions[:3], k=4, model=model)
    assert loaded[0]["results"][0]["id"].startswith("doc-")


def test_misuse_is_one_clear_error(tmp_path, model, tiny_config, pool, flat_dir):
    _, task = pool
    with pytest.raises(QAError, match="no index here"):
        search(tmp_path / "missing", "who?", model=model)
    other = DualEncoder.from_config(tiny_config, seed=1)
    assert model_fingerprint(other) != model_fingerprint(model)
    with pytest.raises(QAError, match="built with another model"):
        open_index(flat_dir, other)
    for k in (0, -3):
        with pytest.raises(QAError, match="k = "):
            search(flat_dir, "who?", k=k, model=model)
    with pytest.raises(QAError, match="no queries"):
        search(flat_dir, [], model=model)
    with pytest.raises(QAError, match="unknown index kind"):
        build_index(model, task.candidates, tmp_path / "x", kind="lsh")
    with pytest.raises(QAError, match="pool is empty"):
        build_index(model, [], tmp_path / "x")
    with pytest.raises(QAError, match="not empty"):
        build_index(model, task.candidates, flat_dir)
    assert not (tmp_path / "x").exists()


def test_cli_index_then_search_json(tmp_path, tiny_bert_dir, capsys):
    out = tmp_path / "idx"
    common = ["--quiet", "index", "--model", str(tiny_bert_dir), "--data", "default"]
    assert main([*common, "--split", "test", "--out", str(out), "--kind", "hnsw"]) == 0
    assert "recall@10 against flat" in capsys.readouterr().out
    queries = tmp_path / "q.txt"
    queries.write_text("What is the tallest mountain?\n\nWho wrote Hamlet?\n")
    args = ["--quiet", "search", "--index", str(out), "--queries", str(queries), "-k", "3"]
    assert main([*args, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [item["query"] for item in lines] == [
        "What is the tallest mountain?",
        "Who wrote Hamlet?",
    ]
    for item in lines:
        assert [hit["rank"] for hit in item["results"]] == [1, 2, 3]
        assert set(item["results"][0]) == {"rank", "score", "text", "id"}
    assert main(["--quiet", "search", "--index", str(out), "--query", "Who?", "-k", "2"]) == 0
    assert capsys.readouterr().out.startswith("query: Who?")


def test_cli_search_misuse_exits_2(tmp_path, tiny_bert_dir, tiny_config, capsys):
    out = tmp_path / "idx"
    DualEncoder.from_config(tiny_config, seed=1).save(tmp_path / "other")
    common = ["--quiet", "index", "--model", str(tiny_bert_dir), "--data", "default"]
    assert main([*common, "--split", "test", "--out", str(out)]) == 0
    assert main([*common, "--split", "test", "--out", str(out)]) == 2  # not empty
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    base = ["--quiet", "search", "--index", str(out)]
    assert main([*base, "--queries", str(empty)]) == 2
    assert main([*base, "--query", "Who?", "-k", "0"]) == 2
    assert main([*base, "--query", "Who?", "--model", str(tmp_path / "other")]) == 2
    assert main(["--quiet", "search", "--index", str(tmp_path / "none"), "--query", "Who?"]) == 2
    errors = capsys.readouterr().err.splitlines()
    assert all(line.startswith("error: ") for line in errors) and len(errors) == 5
