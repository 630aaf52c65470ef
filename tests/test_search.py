"""The Data tab's search: words and "phrases" from the word index (store/search.py), kept in step
with every change of a dataset's pairs, and the substring search where the index cannot answer."""

import json
import shutil

import pytest

from store import ImportFailed, Store, import_file
from store import search as search_index
from store.pairs import copy_pairs, find_pairs, remove_pairs

ANSWERS = [
    ("Call the police at once.", "Ignore it."),
    ("The police station is closed on Sundays.", "Try the neighbourhood office."),
    ("Money is tight; ask the bank.", "The police won't help with money."),
    ("Bake the bread at 200 degrees.", "Bread needs yeast, and patience!"),
    ("A policeman helps; call him.", "C++ is a language."),
]


def write_pairs(path, answers, tag=""):
    with open(path, "w") as f:
        for i, (chosen, rejected) in enumerate(answers):
            prompt = [{"role": "user", "content": f"Question {i}{tag}: what should I do?"}]
            f.write(json.dumps({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                                "rejected": [{"role": "assistant", "content": rejected}]}) + "\n")
    return path


@pytest.fixture
def searched(tmp_path):
    store = Store(tmp_path / "w.duckdb")
    import_file(store, write_pairs(tmp_path / "a.jsonl", ANSWERS), "talk")
    yield store
    store.close()


def found(store, dataset, text):
    rows, total = find_pairs(store, dataset, text)
    assert total == len(rows)
    return sorted(int(r["prompt"][0]["content"].split()[1].rstrip(":")) for r in rows)


def test_words_and_phrases_are_found_in_any_case_in_import_order(searched):
    assert found(searched, "talk", "police") == [0, 1, 2]  # a word: not 'policeman'
    assert found(searched, "talk", "POLICE money") == [2]  # every word, anywhere in the pair
    assert found(searched, "talk", '"call the police"') == [0]  # a phrase: those words in that order
    assert found(searched, "talk", '"the police call"') == []
    rows, total = find_pairs(searched, "talk", "the", page=2, page_size=2)
    assert total == 4 and [r["id"] for r in rows] == [r["id"] for r in find_pairs(searched, "talk", "the")[0][2:4]]
    assert searched.scalar("SELECT count(*) FROM search_index") == 5  # indexed by the import itself


def test_what_the_index_cannot_answer_is_searched_as_text(searched):
    assert search_index.parse("C++") is None and search_index.parse("patience!") is None
    assert found(searched, "talk", "C++") == [4]  # punctuation: the substring search
    assert found(searched, "talk", "patience!") == [3]
    assert found(searched, "talk", "neighb") == [1]  # a part of a word: no word in the index, so the text
    assert found(searched, "talk", "polic") == [0, 1, 2, 4]
    assert found(searched, "talk", "xylophone") == []


def test_the_index_follows_every_change_of_a_datasets_pairs(searched, tmp_path):
    assert copy_pairs(searched, "talk", "police", search="police") == 3
    assert found(searched, "police", "money") == [2]
    assert remove_pairs(searched, "police", search="money") == 1
    assert found(searched, "police", "police") == [0, 1] and found(searched, "talk", "police") == [0, 1, 2]
    # A write the index was not told of (any code that writes dataset_pairs): in step by the next search.
    with searched.transaction() as cur:
        cur.execute("DELETE FROM dataset_pairs WHERE dataset_id = (SELECT id FROM datasets WHERE name = 'police')")
    assert found(searched, "police", "police") == []
    # A second import adds to the dataset and to the index; a bad file adds nothing anywhere.
    import_file(searched, write_pairs(tmp_path / "b.jsonl", [("Police again.", "No.")], tag=" more"), "talk")
    assert found(searched, "talk", "police") == [0, 0, 1, 2]
    before = searched.scalar("SELECT count(*) FROM search_index")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "chosen": "police"}\nnot json\n')
    with pytest.raises(ImportFailed):
        import_file(searched, tmp_path / "bad.jsonl", "talk")
    assert searched.scalar("SELECT count(*) FROM search_index") == before
    assert found(searched, "talk", "police") == [0, 0, 1, 2]


def test_a_lost_index_is_rebuilt_and_a_read_only_workspace_searches_the_text(searched, tmp_path):
    path = searched.path
    searched.close()
    shutil.rmtree(search_index.index_folder(searched))
    with Store(path, read_only=True) as reader:  # cannot rebuild it: the text is searched, with the same result
        assert found(reader, "talk", "police") == [0, 1, 2, 4]  # as a substring: 'policeman' too
    with Store(path) as store:
        assert found(store, "talk", "police") == [0, 1, 2]  # rebuilt: words again
        assert store.scalar("SELECT count(*) FROM search_index") == 5


def test_an_index_deleted_or_damaged_while_the_studio_runs_is_made_again_never_shown(searched, tmp_path):
    """The red-team deleted the index folder, wrote garbage into its meta file and put a file in
    its place while the app ran: searches answer as before (the index rebuilt, or the text
    scanned), and an import stands."""
    before = found(searched, "talk", "police")
    folder = search_index.index_folder(searched)
    shutil.rmtree(folder)
    assert found(searched, "talk", "police") == before
    (folder / "meta.json").write_text("{ not json")
    assert found(searched, "talk", "police") == before
    shutil.rmtree(folder)
    folder.write_text("a file where the index was")
    report = import_file(searched, write_pairs(tmp_path / "b.jsonl", ANSWERS, tag="b"), "more")
    assert report.written and find_pairs(searched, "more", "police")[1] == len(before)
    assert found(searched, "talk", "police") == before
