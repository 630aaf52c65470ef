"""A local LLM judge: any GGUF chat model, through llama.cpp, says which of two answers is better.

The verdict comes from the judge's next-token probabilities of the two labels ("A" and "B", with or
without a leading space), not from parsing what it writes. Each pair is asked twice, the answers
swapped the second time; a verdict counts only when both orders agree, else it is a tie, and the
share of pairs whose orders disagree is the judge's position bias. A judge that puts almost no
probability on either label (under MIN_LABEL_MASS) gives no verdict on that pair, counted as such.

The judge's prompt is a guideline the user can edit (one per dataset, like an annotator's
guideline); it must contain the placeholders {prompt}, {answer_a} and {answer_b}.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import StudioError
from common.stats import win_summary
from pipelines.judges import OUTCOME

PLACEHOLDERS = ("{prompt}", "{answer_a}", "{answer_b}")
DEFAULT_GUIDELINE = (
    "Two assistants answered the same request. Decide which answer is better: more helpful, correct and "
    "honest, and harmless. A longer answer is not better for being longer.\n\n"
    "[Request]\n{prompt}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\n"
    "Which answer is better? Reply with one letter, A or B.")
MIN_LABEL_MASS = 0.01   # the labels' probability together, below which the judge has not answered
ANSWER_CHARS = 3000     # each answer is cut to this many characters, so that a pair fits the context


class JudgeError(StudioError):
    pass


# The judge reads its prompt, the request and both answers in a context of 4,096 tokens: a prompt
# longer than this (about 2,000 tokens of English) would push the request and the answers out.
MAX_GUIDELINE_CHARS = 8_000


def check_guideline(guideline: str) -> None:
    if len(guideline) > MAX_GUIDELINE_CHARS:
        raise JudgeError(f"the judge's prompt is {len(guideline):,} characters; at most {MAX_GUIDELINE_CHARS:,} fit "
                         "the judge's context of 4,096 tokens beside the request and the two answers: shorten it")
    missing = [p for p in PLACEHOLDERS if p not in guideline]
    if missing:
        raise JudgeError(f"the judge's prompt lacks {', '.join(missing)}: it must contain {', '.join(PLACEHOLDERS)} "
                         "(where the request and the two answers go)")


def conversation_text(messages: list[dict]) -> str:
    """A prompt (a conversation) as the judge reads it: one turn alone as it is, several with speakers."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def answer_text(messages: list[dict]) -> str:
    """An answer (its messages) as the judge reads it."""
    return "\n\n".join(m["content"] for m in messages)


class LlamaJudge:
    """A GGUF chat model loaded once, asked about pairs of answers."""

    def __init__(self, path: str | Path, guideline: str = DEFAULT_GUIDELINE, n_ctx: int = 4096):
        from pipelines.batched_sampling import ChatPrompts
        from pipelines.chat import load_llama

        check_guideline(guideline)
        path = Path(path).expanduser()
        if path.suffix != ".gguf" or not path.is_file():
            raise JudgeError(f"{path}: no such GGUF file; the judge is a chat model's .gguf file")
        try:
            self.llm = load_llama(path, n_ctx=n_ctx, verbose=False)
        except (ValueError, RuntimeError) as e:
            raise JudgeError(f"{path}: llama.cpp cannot load it as a model ({e})") from None
        self.chat = ChatPrompts(self.llm)
        if self.chat.formatter is None:
            raise JudgeError(f"{path}: not a chat model (the GGUF file has no chat template); the judge must be an "
                             "instruct model that can answer a question")
        self.path, self.guideline, self.n_ctx = path, guideline, n_ctx
        self.label_ids = {label: sorted({self.llm.tokenize(text.encode(), add_bos=False, special=False)[0]
                                         for text in (label, f" {label}")}) for label in ("A", "B")}

    @property
    def name(self) -> str:
        return self.path.name

    def close(self) -> None:
        self.llm.close()

    def prompt_ids(self, request: str, answer_a: str, answer_b: str) -> list[int]:
        text = (self.guideline.replace("{prompt}", request).replace("{answer_a}", answer_a[:ANSWER_CHARS])
                .replace("{answer_b}", answer_b[:ANSWER_CHARS]))
        return self.chat.tokens([{"role": "user", "content": text}])

    def prefers_a(self, request: str, answer_a: str, answer_b: str) -> float | None:
        """P(A is better) from the two labels' probabilities; None when the judge puts almost no
        probability on either (it was going to say something else)."""
        ids = self.prompt_ids(request, answer_a, answer_b)
        if len(ids) >= self.n_ctx:
            ids = ids[-(self.n_ctx - 1):]  # the question and the labels' place are at the end
        import llama_cpp
        import numpy as np

        self.llm.reset()
        self.llm.eval(ids)
        # The last position's logits (the only ones computed: llama.cpp keeps no others without logits_all).
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1),
                                       shape=(self.llm.n_vocab(),)).astype(np.float64)
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        mass = {label: float(probs[ids_].sum()) for label, ids_ in self.label_ids.items()}
        if mass["A"] + mass["B"] < MIN_LABEL_MASS:
            return None
        return mass["A"] / (mass["A"] + mass["B"])

    def compare(self, prompt: list[dict], first: str, second: str) -> dict:
        """The verdict on two answers to `prompt`, asked in both orders: 'first', 'second', 'tie'
        (the orders disagree, or the judge is undecided) or None (no verdict)."""
        request = conversation_text(prompt)
        p1 = self.prefers_a(request, first, second)     # P(first better), first shown as A
        p2 = self.prefers_a(request, second, first)     # P(second better), second shown as A
        if p1 is None or p2 is None:
            return {"verdict": None, "p_first": None, "orders_disagree": None}
        first_says, second_says = p1 > 0.5, p2 < 0.5    # each order: is the first answer better?
        verdict = ("first" if first_says else "second") if first_says == second_says else "tie"
        return {"verdict": verdict, "p_first": (p1 + 1 - p2) / 2, "orders_disagree": first_says != second_says}



def judge_summary(results: list[dict]) -> dict:
    """Win rate of the first answers (ties half) over the pairs with a verdict, its interval, the
    share of those whose two orders disagreed (position bias) and how many got no verdict."""
    decided = [r for r in results if r["verdict"] is not None]
    summary = win_summary([OUTCOME[r["verdict"]] for r in decided]) if decided else \
        {"win_rate": float("nan"), "win_low": 0.0, "win_high": 1.0, "n": 0, "verdict": "no verdict"}
    summary["position_bias"] = sum(r["orders_disagree"] for r in decided) / len(decided) if decided else float("nan")
    summary["no_verdict"] = len(results) - len(decided)
    return summary
