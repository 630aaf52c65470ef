"""Chat formats SFT can give a base model that has none (a pretrained, not instruction-tuned base).

A format is a chat template, the special tokens it writes and the one that ends a turn. Giving it
adds the tokens the tokenizer lacks (the embeddings grow, and SFT trains the new rows), sets the
template and makes the end-of-turn token the tokenizer's end-of-sequence token, so that
generation, the GGUF export and Ollama's Modelfile all stop where an answer ends. The SFT model
carries its tokenizer (with the template) beside its adapter: from then on it is a chat model
like any other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatFormat:
    template: str
    tokens: tuple[str, ...]
    end: str


CHAT_FORMATS = {
    "chatml": ChatFormat(
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
        ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
    "llama3": ChatFormat(
        "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + "
        "message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), "<|eot_id|>"),
    "gemma": ChatFormat(
        "{% for message in messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}",
        ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
}
KEEP = "auto"  # the base's own template (refused where it has none)


def give_chat_format(tokenizer, model, name: str) -> list[int]:
    """Give `tokenizer` (and `model`'s embeddings) the chat format `name`; the ids of the tokens
    it added, whose embedding rows must be trained."""
    chat_format = CHAT_FORMATS[name]
    before = len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(chat_format.tokens)},
                                 replace_extra_special_tokens=False)
    tokenizer.chat_template = chat_format.template
    tokenizer.eos_token = chat_format.end
    if tokenizer.pad_token is None or tokenizer.pad_token == chat_format.end:
        tokenizer.pad_token = tokenizer.pad_token or chat_format.end
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    end_id = tokenizer.convert_tokens_to_ids(chat_format.end)
    configured = model.generation_config.eos_token_id
    configured = configured if isinstance(configured, list) else [configured] if configured is not None else []
    model.generation_config.eos_token_id = [end_id, *[i for i in configured if i != end_id]]
    return [tokenizer.convert_tokens_to_ids(t) for t in chat_format.tokens
            if tokenizer.convert_tokens_to_ids(t) >= before]


NEW_TOKENS = "new_tokens.safetensors"  # beside an adapter: the trained embedding rows of the tokens SFT added


def train_new_rows(model, ids: list[int]) -> list:
    """Make the embedding rows of the tokens `ids` trainable, and only those: the input embeddings
    and, where not tied to them, the output layer, with a gradient hook that zeroes every other
    row. (PEFT's trainable tokens wrap the output layer, which TRL's fused head bypasses: it reads
    `lm_head.weight` directly, so their output rows would never learn.) The weights made trainable."""
    import torch

    weights = []
    for module in (model.get_input_embeddings(), model.get_output_embeddings()):
        if module is None or any(module.weight is w for w in weights):
            continue
        mask = torch.zeros(module.weight.shape[0], 1)
        mask[ids] = 1.0
        module.weight.requires_grad_(True)
        module.weight.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device, grad.dtype))
        weights.append(module.weight)
    return weights


def save_new_rows(model, ids: list[int], folder) -> None:
    """The new tokens' rows (input embeddings; output layer where untied) into `folder`."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    rows = {"ids": torch.tensor(ids), "input": embeddings.weight[ids].detach().float().cpu().contiguous()}
    if output is not None and output.weight is not embeddings.weight:
        rows["output"] = output.weight[ids].detach().float().cpu().contiguous()
    save_file(rows, str(Path(folder) / NEW_TOKENS))


def load_new_rows(model, folder) -> bool:
    """Put the rows `save_new_rows` wrote back into `model` (grown to hold them); False if none."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    path = Path(folder) / NEW_TOKENS
    if not path.is_file():
        return False
    rows = load_file(str(path))
    ids = rows["ids"].tolist()
    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    with torch.no_grad():
        embeddings.weight[ids] = rows["input"].to(embeddings.weight.device, embeddings.weight.dtype)
        if "output" in rows and output is not None and output.weight is not embeddings.weight:
            output.weight[ids] = rows["output"].to(output.weight.device, output.weight.dtype)
    return True
