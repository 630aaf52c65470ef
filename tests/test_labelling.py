"""Labelling in the store: serving pairs to annotators, committing labels, undo, agreement, and
labels turning into training pairs; curation of a dataset's pairs."""

import json
import random

import pytest

from store import export_pairs, import_file
from store.labelling import LabelError, LabelQueue, agreement, cohen_kappa, progress
from store.pairs import CurationError, copy_pairs, find_pairs, get_pair, remove_pairs, split_pairs


@pytest.fixture
def unlabelled(tmp_path, store):
    """A dataset 'chat' of 6 pairs without a verdict (as generated candidates are)."""
    from store.db import prompt_key, response_key

    with store.transaction() as cur:
        cur.execute("INSERT INTO datasets (name) VALUES ('chat')")
        for i in range(6):
            prompt = [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}]
            pid = prompt_key(prompt)
            cur.execute("INSERT INTO prompts (id, messages) VALUES (?, ?)", [pid, json.dumps(prompt)])
            ids = []
            for text in (f"It is {2 * i}.", f"Maybe {2 * i + 1}?"):
                answer = [{"role": "assistant", "content": text}]
                rid = response_key(pid, answer)
                ids.append(rid)
                cur.execute(
                    "INSERT INTO responses (id, prompt_id, messages, is_empty, model) VALUES (?, ?, ?, false, ?)",
                    [rid, pid, json.dumps(answer), "m-" + text[0]],
                )
            cur.execute("INSERT INTO pairs (id, prompt_id, first_id, second_id) VALUES (?, ?, ?, ?)",
                        [f"pair{i}", pid, *ids])
            cur.execute("INSERT INTO dataset_pairs VALUES (1, ?)", [f"pair{i}"])
            cur.execute("INSERT INTO dataset_prompts VALUES (1, ?)", [pid])
    return store


def labels(store):
    return store.query("SELECT pair_id, annotator, verdict, swapped FROM labels ORDER BY id")


def test_a_served_pair_shows_both_responses_and_left_right_answers_map_to_first_second(unlabelled):
    queue = LabelQueue(unlabelled, seed=1)
    seen = {False: 0, True: 0}
    for _ in range(6):
        served = queue.next_pair("chat", "ann", "tab1")
        seen[served.swapped] += 1
        first_text = "It is" if not served.swapped else "Maybe"
        assert served.left[0]["content"].startswith(first_text)
        assert served.prompt[0]["content"].startswith("Question")
        queue.label("tab1", "ann", served, "left")
        stored = labels(unlabelled)[-1]
        # "left" is the pair's first response unless the pair was shown swapped.
        assert stored == {"pair_id": served.pair_id, "annotator": "ann",
                          "verdict": "second" if served.swapped else "first", "swapped": served.swapped}
    assert seen[False] and seen[True]  # the order is randomised per pair
    assert queue.next_pair("chat", "ann", "tab1") is None  # each pair once per annotator
    assert len(labels(unlabelled)) == 6


def test_two_sessions_are_never_served_the_same_pair_at_once(unlabelled):
    queue = LabelQueue(unlabelled)
    a = queue.next_pair("chat", "alice", "tab-a")
    b = queue.next_pair("chat", "bob", "tab-b")
    c = queue.next_pair("chat", "alice", "tab-c")  # the same annotator in a second tab
    assert len({a.pair_id, b.pair_id, c.pair_id}) == 3
    # Asking again in the same tab hands back the tab's claim and takes the next free pair.
    assert queue.next_pair("chat", "alice", "tab-a").pair_id not in {b.pair_id, c.pair_id}
    # Closing a tab frees its pair for the others.
    queue.release("tab-b")
    served_after = set()
    for tab in ("tab-x", "tab-y", "tab-z", "tab-w"):
        served_after.add(queue.next_pair("chat", "carol", tab).pair_id)
    assert b.pair_id in served_after


def test_claims_of_a_closed_tab_expire(unlabelled):
    queue = LabelQueue(unlabelled, claim_ttl_s=0)
    first = queue.next_pair("chat", "alice", "tab-a")
    assert queue.next_pair("chat", "bob", "tab-b").pair_id == first.pair_id


def test_pairs_with_fewest_labels_come_first_so_annotators_spread_then_overlap(unlabelled):
    queue = LabelQueue(unlabelled)
    for _ in range(6):
        queue.label("t", "alice", queue.next_pair("chat", "alice", "t"), "left")
    order = []
    for _ in range(3):
        served = queue.next_pair("chat", "bob", "t")
        order.append(served.pair_id)
        queue.label("t", "bob", served, "tie")
    # carol gets the pairs bob has not labelled (one label each) before those with two.
    carol = queue.next_pair("chat", "carol", "t")
    assert carol.pair_id not in order


def test_undo_takes_back_the_latest_label_and_serves_that_pair_as_it_was(unlabelled):
    queue = LabelQueue(unlabelled, seed=3)
    first = queue.next_pair("chat", "ann", "t")
    queue.label("t", "ann", first, "right")
    second = queue.next_pair("chat", "ann", "t")
    queue.label("t", "ann", second, "both-bad")
    back = queue.undo("chat", "ann", "t")
    assert (back.pair_id, back.swapped, back.left) == (second.pair_id, second.swapped, second.left)
    assert [r["pair_id"] for r in labels(unlabelled)] == [first.pair_id]
    # The undone pair is held by this tab; another annotator is not served it meanwhile.
    others = {queue.next_pair("chat", "bob", f"b{i}").pair_id for i in range(5)}
    assert second.pair_id not in others
    queue.label("t", "ann", back, "left")
    assert len(labels(unlabelled)) == 2
    assert queue.undo("chat", "nobody", "t") is None


def test_a_new_verdict_from_the_same_annotator_replaces_the_old(unlabelled):
    queue = LabelQueue(unlabelled)
    served = queue.next_pair("chat", "ann", "t")
    queue.label("t", "ann", served, "left")
    queue.label("t2", "ann", served, "tie")
    assert [r["verdict"] for r in labels(unlabelled)] == ["tie"]


def test_bad_annotator_names_and_datasets_are_refused(unlabelled):
    queue = LabelQueue(unlabelled)
    with pytest.raises(LabelError, match="annotator name"):
        queue.next_pair("chat", "  ", "t")
    with pytest.raises(LabelError, match="reserved"):
        queue.next_pair("chat", "source", "t")
    with pytest.raises(LabelError, match="no dataset named 'nope'"):
        queue.next_pair("nope", "ann", "t")


def test_progress_counts_per_annotator_and_verdict(unlabelled):
    queue = LabelQueue(unlabelled)
    for answer in ("left", "tie", "skip"):
        queue.label("t", "ann", queue.next_pair("chat", "ann", "t"), answer)
    queue.label("u", "bob", queue.next_pair("chat", "bob", "u"), "both-bad")
    p = progress(unlabelled, "chat")
    assert p["pairs"] == 6
    assert sum(p["annotators"]["ann"].values()) == 3 and p["annotators"]["ann"]["skip"] == 1
    assert p["annotators"]["bob"]["both-bad"] == 1
    # A skip does not count as a label when serving: bob got the pair ann skipped.
    assert p["labelled_by_anyone"] == 3


def test_cohen_kappa_matches_a_hand_computed_example():
    # 10 items: 7 agreements; rater a: 6 first / 4 second, rater b: 5 / 5.
    a = ["first"] * 6 + ["second"] * 4
    b = ["first"] * 4 + ["second"] * 2 + ["second"] * 3 + ["first"]
    p_o = 0.7
    p_e = 0.6 * 0.5 + 0.4 * 0.5
    assert cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert cohen_kappa(["tie"] * 3, ["tie"] * 3) is None  # undefined, not a made-up 1.0
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_agreement_between_annotators_and_with_the_source_verdicts(tmp_path, store, pairs_file):
    import_file(store, pairs_file, "hh")
    queue = LabelQueue(store, seed=0)
    shown = []
    for _ in range(4):
        served = queue.next_pair("hh", "alice", "a")
        shown.append(served)
        queue.label("a", "alice", served, "right" if served.swapped else "left")  # agrees with the file
    for i, served in enumerate(shown):  # bob agrees on two, calls two a tie
        queue.label("b", "bob", served, ("right" if served.swapped else "left") if i < 2 else "tie")
    report = agreement(store, "hh")
    assert report["annotators"] == ["alice", "bob", "source"]
    rows = {(r["a"], r["b"]): r for r in report["pairs"]}
    assert rows[("alice", "source")]["agreement"] == 1.0 and rows[("alice", "source")]["pairs"] == 4
    assert rows[("alice", "source")]["kappa"] is None  # the source always says 'first': kappa says nothing
    assert rows[("alice", "bob")]["agreement"] == 0.5
    assert rows[("alice", "bob")]["kappa"] == pytest.approx(cohen_kappa(["first"] * 4, ["first"] * 2 + ["tie"] * 2))
    assert {d["pair_id"] for d in report["disagreements"]} == {s.pair_id for s in shown[2:]}


def test_labels_decide_the_training_pairs_and_what_is_left_out_is_counted(tmp_path, unlabelled):
    queue = LabelQueue(unlabelled, seed=5)
    answers = {"alice": ["left", "right", "tie", "both-bad", "skip", "left"],
               "bob": ["left", "left", "tie", "tie", "skip", "right"]}
    # Both annotators label the same six pairs, with the answers above (about left/right).
    served = []
    for _ in range(6):
        s = queue.next_pair("chat", "alice", "t")
        served.append(s)
        queue.label("t", "alice", s, answers["alice"][len(served) - 1])
    for s, answer in zip(served, answers["bob"]):
        queue.label("u", "bob", s, answer)
    report = export_pairs(unlabelled, tmp_path / "out.jsonl", "chat")
    # Pair 0: both left -> a pair; pair 1: split; 2: tie; 3: tie/both-bad -> tie; 4: skips only;
    # 5: split.
    assert report.pairs == 1
    assert report.left_out == {"split": 2, "tie": 2, "skip": 1}
    record = json.loads((tmp_path / "out.jsonl").read_text())
    assert record["chosen"] == served[0].left
    assert "left out 5 without a preference" in report.summary()


def test_find_pairs_searches_and_pages(tmp_path, store, pairs_file):
    import_file(store, pairs_file, "hh")
    rows, total = find_pairs(store, "hh", page=2, page_size=10)
    assert total == 1000 and len(rows) == 10
    everything, _ = find_pairs(store, "hh", page_size=20)
    assert [r["id"] for r in everything[10:]] == [r["id"] for r in rows]
    found, n = find_pairs(store, "hh", search="BOMB")
    assert 0 < n < 1000
    assert all("bomb" in json.dumps(r, ensure_ascii=False).lower() for r in found)
    assert find_pairs(store, "hh", search="100%_no such text")[1] == 0
    pair = get_pair(store, found[0]["id"])
    assert pair["datasets"] == ["hh"] and pair["source_verdict"] == "first" and pair["labels"] == []


def test_search_finds_text_in_any_case_not_json_keys_and_follows_the_dataset(tmp_path, store):
    rows = [{"prompt": "Where is the Café?", "chosen": 'He said "turn left".', "rejected": "No idea."},
            {"prompt": "Tell me about roles", "chosen": "A role is a part.", "rejected": "Content is king."},
            {"prompt": "Plain question", "chosen": "Plain answer", "rejected": "Another answer"}]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_file(store, tmp_path / "s.jsonl", "s")

    def found(search):
        hits, total = find_pairs(store, "s", search=search)
        assert total == len(hits)
        return [h["prompt"][0]["content"] for h in hits]

    assert found("café") == found("CAFÉ") == ["Where is the Café?"]          # any case, beyond ASCII
    assert found('"turn left"') == ["Where is the Café?"]                     # quotes as typed
    assert found("ROLE") == ["Tell me about roles"]                           # text, not the "role" key
    assert found("content") == ["Tell me about roles"] and found("assistant") == []
    assert found("answer") == ["Plain question"]
    pair_id = find_pairs(store, "s")[0][2]["id"]
    assert found(pair_id) == ["Plain question"]                               # a pair's own id
    remove_pairs(store, "s", pair_ids=[pair_id])
    assert found("answer") == []                                              # a repeated search sees the change


def test_search_matches_what_a_reader_sees_around_escapes_quotes_and_backslashes(tmp_path, store):
    # Texts built from the characters JSON escapes (quote, backslash, newline, a control character)
    # and letters next to them, and searches cut from those texts: a pair is found exactly when one
    # of its texts contains the search, in any case; or, for a search of words the word index holds
    # (store.search), when its texts hold every one of those words.
    from store import search as search_index

    def words(text: str) -> set[str]:
        return set(search_index._ANALYZER.analyze(text))

    rng = random.Random(0)
    alphabet = ["a", "B", "n", "u", "0", "1", "e", " ", "\n", '"', "\\", "\x01", "é", "{", ":", ","]
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) + f" {i}" for i in range(300)]
    rows = [{"prompt": texts[i], "chosen": texts[i + 1], "rejected": texts[i + 2]} for i in range(0, 297, 3)]
    (tmp_path / "e.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    import_file(store, tmp_path / "e.jsonl", "e")
    searches = ["nn", "u0001", "n ", "\\n", 'e"', "ba", "0 1", "{:", "É"]
    searches += [t[rng.randint(0, 3):rng.randint(4, 8)] for t in rng.sample(texts, 40)]
    for search in searches:
        wanted = search.strip().lower()
        if not wanted:
            continue
        expected = {r["prompt"] for r in rows if any(wanted in r[k].lower() for k in ("prompt", "chosen", "rejected"))}
        phrases = search_index.parse(search)
        if phrases is not None and all(len(p) == 1 for p in phrases):
            by_words = {r["prompt"] for r in rows if all(
                p[0] in words(" ".join((r["prompt"], r["chosen"], r["rejected"]))) for p in phrases)}
            expected = by_words or expected  # words nobody wrote: searched as text
        hits, total = find_pairs(store, "e", search=search, page_size=len(rows))
        assert {h["prompt"][0]["content"] for h in hits} == expected, f"search {search!r}"
        assert total == len(expected)


def test_remove_copy_and_move_pairs_between_datasets(tmp_path, store, pairs_file):
    import_file(store, pairs_file, "hh")
    _, bombs = find_pairs(store, "hh", search="bomb")
    assert copy_pairs(store, "hh", "bombs", search="bomb") == bombs
    assert find_pairs(store, "bombs")[1] == bombs
    assert (
        store.scalar("SELECT count(*) FROM dataset_prompts WHERE dataset_id = ?", [store.dataset_id("bombs")]) == bombs
    )
    assert json.loads(store.scalar("SELECT recipe FROM datasets WHERE name = 'bombs'"))["from"] == "hh"

    one = find_pairs(store, "bombs")[0][0]["id"]
    assert copy_pairs(store, "bombs", "later", pair_ids=[one], move=True) == 1
    assert find_pairs(store, "bombs")[1] == bombs - 1 and find_pairs(store, "later")[1] == 1
    assert remove_pairs(store, "hh", search="bomb") == bombs
    assert find_pairs(store, "hh")[1] == 1000 - bombs
    assert (
        store.scalar("SELECT count(*) FROM dataset_prompts WHERE dataset_id = ?", [store.dataset_id("hh")])
        == 1000 - bombs
    )
    assert store.stats()["pairs"] == 1000  # pairs are only taken out of datasets, never deleted
    with pytest.raises(CurationError, match="already in that dataset"):
        copy_pairs(store, "hh", "hh")
    with pytest.raises(CurationError, match="no dataset named"):
        remove_pairs(store, "nope")


def test_a_split_by_prompt_shares_no_prompt_and_a_split_by_pair_samples_pairs(store, pairs_file):
    import_file(store, pairs_file, "all")
    # Two answers to one prompt asked twice: a split by prompt must keep them together.
    repeated = [{"prompt": "Same question?", "chosen": f"Answer {i}.", "rejected": f"Other {i}."} for i in range(2)]
    (pairs_file.parent / "repeated.jsonl").write_text("".join(json.dumps(r) + "\n" for r in repeated))
    import_file(store, pairs_file.parent / "repeated.jsonl", "all")

    assert split_pairs(store, "all", ("a", "b"), share=0.5, seed=1) in ((501, 501), (500, 502), (502, 500))
    prompts = {name: {r["prompt_id"] for r in store.query(
        "SELECT prompt_id FROM dataset_prompts WHERE dataset_id = ?", [store.dataset_id(name)])} for name in "ab"}
    assert not prompts["a"] & prompts["b"] and len(prompts["a"]) + len(prompts["b"]) == 1001
    # The same seed, the same split; by pair, a sample of the asked share.
    assert split_pairs(store, "all", ("c", "d"), share=0.5, seed=1) == split_pairs(
        store, "all", ("e", "f"), 0.5, "prompt", 1
    )
    assert find_pairs(store, "c")[1] == find_pairs(store, "a")[1]
    assert split_pairs(store, "a", ("sample", "rest"), share=0.2, by="pair") == (100, find_pairs(store, "a")[1] - 100)
    with pytest.raises(CurationError, match="exists already"):
        split_pairs(store, "all", ("a", "new"))
    with pytest.raises(CurationError, match="between 0 and 1"):
        split_pairs(store, "all", ("x", "y"), share=1.0)
    assert store.dataset_id("x") is None and store.dataset_id("new") is None


def scored(store, gaps: dict[str, float], model: str = "rm-run1") -> None:
    """The reward model `model` scores pair i's first answer gaps[i] above its second."""
    with store.transaction() as cur:
        for pair_id, gap in gaps.items():
            first, second = cur.execute("SELECT first_id, second_id FROM pairs WHERE id = ?", [pair_id]).fetchone()
            cur.execute("INSERT INTO rewards (response_id, model, reward, run_id) "
                        "VALUES (?, ?, ?, NULL), (?, ?, 0.0, NULL)", [first, model, gap, second, model])


def served_order(queue, annotator, order, reward_model="rm-run1") -> list[str]:
    shown = []
    while (served := queue.next_pair("chat", annotator, "t", order, reward_model)) is not None:
        shown.append(served.pair_id)
        queue.label("t", annotator, served, "skip")
    return shown


def test_the_uncertain_order_serves_the_pairs_the_reward_model_is_least_sure_of_first(unlabelled):
    from store.labelling import queue

    scored(unlabelled, {"pair0": 3.0, "pair1": 0.1, "pair2": -0.5, "pair3": 2.0, "pair4": -0.05})  # pair5 unscored
    assert served_order(LabelQueue(unlabelled), "ann", "uncertain") == ["pair4", "pair1", "pair2", "pair3", "pair0",
                                                                        "pair5"]
    # A pair someone has labelled comes after every unlabelled one, however unsure the model is.
    LabelQueue(unlabelled).label("t", "bob", queue_pair(unlabelled, "pair4"), "left")
    listed = queue(unlabelled, "chat", "carol", "uncertain", "rm-run1", limit=3)
    assert [r["pair_id"] for r in listed] == ["pair1", "pair2", "pair3"]
    assert listed[0]["reward_gap"] == pytest.approx(0.1) and listed[0]["labels"] == 0
    # The shuffled order does not read the reward model at all.
    assert served_order(LabelQueue(unlabelled), "dan", "shuffled", None)[-1] == "pair4"


def queue_pair(store, pair_id):
    from store.labelling import ServedPair

    return ServedPair(pair_id, [], [], [], None, None, False)


def test_the_disagree_order_serves_the_pairs_where_reward_model_and_judge_part_first(unlabelled):
    from store.labelling import add_rule_labels

    scored(unlabelled, {"pair0": 3.0, "pair1": 0.1, "pair2": -0.5, "pair3": 2.0, "pair4": -0.05, "pair5": 1.0})
    # The judge takes the other side on pair0 and pair5 (those first, the smaller gap first), the
    # reward model's on pair3, and gives a tie (its two orders disagreed) on pair2.
    add_rule_labels(unlabelled, "judge:j.gguf", [("pair0", "second"), ("pair5", "second"), ("pair3", "first"),
                                                 ("pair2", "tie")])
    assert served_order(LabelQueue(unlabelled), "ann", "disagree") == ["pair5", "pair0", "pair2", "pair4", "pair1",
                                                                       "pair3"]


def test_an_order_that_needs_a_reward_model_says_what_is_missing(unlabelled):
    queue = LabelQueue(unlabelled)
    with pytest.raises(LabelError, match="unknown order 'best'; one of shuffled, uncertain, disagree"):
        queue.next_pair("chat", "ann", "t", "best")
    with pytest.raises(LabelError, match="reads a reward model's scores: pick a reward model"):
        queue.next_pair("chat", "ann", "t", "uncertain")
    with pytest.raises(LabelError, match="no reward model named 'rm-run9'; train one first"):
        queue.next_pair("chat", "ann", "t", "uncertain", "rm-run9")
    with unlabelled.transaction() as cur:
        cur.execute("INSERT INTO models (name, kind, path, purpose) VALUES ('rm-run9', 'adapter', '/x', 'reward')")
    with pytest.raises(LabelError, match="'rm-run9' has not scored the answers of 'chat' yet"):
        queue.next_pair("chat", "ann", "t", "uncertain", "rm-run9")
    assert labels(unlabelled) == []


def test_kappa_of_a_judge_measures_the_answer_it_picks_not_the_side_the_file_stored_it_on():
    """HH-RLHF stores the chosen answer first, so people's side never varies and plain kappa is 0
    whatever the judge does; counted in both orders of each pair, kappa says how often the judge picks
    people's answer beyond a coin's 50%, with an interval over pairs."""
    from common.stats import kappa_interval, pair_kappa

    people = ["first"] * 100
    judge = ["first"] * 59 + ["second"] * 41
    assert cohen_kappa(judge, people) == pytest.approx(0.0)  # the artefact
    assert pair_kappa(judge, people) == pytest.approx(2 * 0.59 - 1)
    low, high = kappa_interval(judge, people, kappa=pair_kappa)
    assert low < 0 < 0.18 < high  # 59 of 100 is not clearly better than a coin
    low, _ = kappa_interval(["first"] * 70 + ["second"] * 30, people, kappa=pair_kappa)
    assert low > 0  # 70 of 100 is
    assert pair_kappa(["first"] * 10, ["first"] * 10) == pytest.approx(1.0)
    assert pair_kappa(["tie"] * 3, ["tie"] * 3) is None  # still undefined, not a made-up 1.0
