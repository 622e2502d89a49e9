"""Hub conventions for every model folder a stage writes (prepare's imported base, sft, rm, rs,
dpo): a README.md model card whose YAML front matter is what the Hugging Face Hub reads
(base_model, library_name, tags, pipeline_tag) and whose body says how the folder was made
(stage, base model, data sizes, key hyperparameters, final metrics), plus the files a loader
expects beside the weights: generation_config.json and the chat template.

The card is built with huggingface_hub's ModelCard/ModelCardData, so the front matter is the
Hub's own serialisation. `base_model` is carried along the chain: each stage reads it from its
input folder's card, so the DPO model's card still names the model the pipeline started from.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData, metadata_load

CARD_FILE = "README.md"
GENERATION_CONFIG = "generation_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"

STAGE_DESCRIPTIONS = {
    "prepare": "the base model, imported unchanged (dequantized when it came as GGUF)",
    "sft": "supervised finetuning on multi-turn conversations, loss on assistant tokens (Xwin-LM-SFT)",
    "rs": "rejection-sampling finetuning on each prompt's best-of-N response (Xwin-LM-RS)",
    "rm": "a reward model: the LM body with a scalar head, Bradley-Terry loss on preference pairs (Xwin-RM)",
    "dpo": "direct preference optimization against a frozen reference on ranked pairs (Xwin-LM-DPO)",
}
PIPELINE_TAGS = {"causal_lm": "text-generation", "reward_model": "text-classification"}
# A Hub repository id (owner/name); a local path or an artifact key is no base_model on the Hub.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
# huggingface_hub's cache layout: .../models--<owner>--<name>/snapshots/<revision>
_HUB_CACHE = re.compile(r"models--([\w.-]+?)--([\w.-]+)/snapshots/")


def is_repo_id(name: str | None) -> bool:
    return bool(name) and _REPO_ID.fullmatch(name) is not None and not Path(name).exists()


def base_model_of(folder: Path, fallback: str) -> str:
    """The model a folder descends from: its xwin card's base_model, else the Hub id its path
    shows (a huggingface_hub cache snapshot), else `fallback` (how the user named it)."""
    card = Path(folder) / CARD_FILE
    if card.is_file():
        meta = metadata_load(card) or {}
        if "xwin" in (meta.get("tags") or []) and meta.get("base_model"):
            return str(meta["base_model"])
    if match := _HUB_CACHE.search(str(Path(folder).resolve())):
        return f"{match.group(1)}/{match.group(2)}"
    return fallback


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return f"`{json.dumps(value)}`"
    return str(value).replace("|", "\\|")


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> str:
    if not rows:
        return "(none)\n"
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in rows.items()]
    return "\n".join(lines) + "\n"


def model_card(*, stage: str, kind: str, base_model: str, started_from: str | None = None,
               run: str | None = None, data: Mapping[str, Any] | None = None,
               hyperparameters: Mapping[str, Any] | None = None,
               metrics: Mapping[str, float] | None = None) -> ModelCard:
    """The card of one model folder. `kind`: causal_lm or reward_model; `data`: sizes (examples
    trained on, held out, dropped); `hyperparameters`: the settings that decide the result."""
    card_data = ModelCardData(
        base_model=base_model if is_repo_id(base_model) else None,
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[kind],
        tags=["xwin", stage, *(["reward-model"] if kind == "reward_model" else [])],
    )
    loader = "AutoModelForSequenceClassification" if kind == "reward_model" else "AutoModelForCausalLM"
    lines = [
        f"# xwin {stage} model", "",
        f"Stage `{stage}` of the xwin pipeline: {STAGE_DESCRIPTIONS.get(stage, stage)}.", "",
        f"- base model: `{base_model}`",
    ]
    if started_from and started_from != base_model:
        lines.append(f"- started from: `{started_from}`")
    if run:
        lines.append(f"- pipeline run: `{run}`")
    lines += [
        "", "A plain transformers folder (safetensors, tokenizer with its chat template, generation "
        "config); vLLM serves it as it is.", "",
        "```python", f"from transformers import AutoTokenizer, {loader}", "",
        f'model = {loader}.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
    ]
    if data is not None:
        lines += ["## Data", "", _table(data, ("data", "examples"))]
    if hyperparameters is not None:
        lines += ["## Hyperparameters", "", _table(hyperparameters, ("setting", "value"))]
    if metrics is not None:
        lines += ["## Final metrics", "",
                  "The last logged training values (`train_*`) and the held-out evaluation (`eval_*`); "
                  "every logged step is in `metrics.jsonl` and in the TensorBoard events under "
                  "`tensorboard/`.", "",
                  _table(metrics, ("metric", "value"))]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def has_chat_template(folder: Path) -> bool:
    """transformers 5 writes the template to chat_template.jinja, earlier releases into
    tokenizer_config.json; either is what a loader reads."""
    folder = Path(folder)
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def write_hub_files(folder: Path, card: ModelCard) -> None:
    """The card, and a generation_config.json where save_pretrained wrote none (a sequence
    classifier has no generation config; a generator reading the folder still wants its
    bos/eos/pad ids)."""
    from transformers import AutoConfig, GenerationConfig

    folder = Path(folder)
    card.save(folder / CARD_FILE)
    if not (folder / GENERATION_CONFIG).exists():
        GenerationConfig.from_model_config(AutoConfig.from_pretrained(folder)).save_pretrained(folder)
